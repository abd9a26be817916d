"""The Composer room: everything that imports Composer (the loggers, ``SampleLogger``, the rank gather of
sample tables, checkpoint staging). May import every other part of ``logbus``; nothing in ``logbus`` imports it.

Migrating is one line::

    - from composer.loggers import WandBLogger
    + from logbus.composer import WandBLogger
"""

from logbus.composer._loggers import LOGBUS_LOGGER_OPTIONS, LogBusLogger, WandBLogger, artifact_type_for
from logbus.composer._sample_logger import SAMPLE_LOGGER_OPTIONS, SampleLogger

__all__ = ["LogBusLogger", "WandBLogger", "SampleLogger", "artifact_type_for", "LOGBUS_LOGGER_OPTIONS", "SAMPLE_LOGGER_OPTIONS"]
