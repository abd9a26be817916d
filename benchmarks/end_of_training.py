"""How long the end of training takes with a raising, a slow and a hung backend beside a healthy one.

A real Composer ``Trainer`` (the demo digits CNN on the CPU) logs through one ``LogBusLogger`` to a
healthy in-memory backend, the local run folder and the faulty ones of each scenario, with a small
``close_timeout``. For each scenario this prints, in seconds, the end of training (from the last
training batch to ``trainer.close()`` returning: ``fit_end``'s flush, ``close``'s flush and the final
close), how many waits ran out per backend, and whether the healthy backend got every metric Composer
logged::

    .venv/bin/python benchmarks/end_of_training.py [--close-timeout 1.0] [--batches 8]

A plain script, not a pytest benchmark: it reports figures and asserts only that every healthy record
arrived. It writes its run folders under a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

SLOW_SECONDS_PER_RECORD = 0.02  # a backend on a slow link: every record takes this long


class Healthy:
    def __init__(self, name: str = "healthy"):
        self.name, self.metrics, self.finish = name, [], None

    def log(self, record):
        from logbus.records import Metrics

        if isinstance(record, Metrics):
            self.metrics.append((record.step, dict(record.values)))

    def close(self, finish):
        self.finish = finish


class Raising(Healthy):
    def log(self, record):
        raise RuntimeError("this backend raises on every record")

    def close(self, finish):
        raise RuntimeError("this backend raises on close")


class Slow(Healthy):
    def log(self, record):
        time.sleep(SLOW_SECONDS_PER_RECORD)
        super().log(record)


class Hung(Healthy):
    def __init__(self, name: str = "hung"):
        super().__init__(name)
        self.release = threading.Event()

    def log(self, record):
        self.release.wait()


def run_scenario(faults: list[str], close_timeout: float, batches: int) -> dict:
    import torch
    from composer import Callback, Trainer
    from composer.loggers import LoggerDestination
    from composer.models import ComposerClassifier

    from logbus.composer import LogBusLogger
    from logbus.demo import DigitsCNN, digits_loaders

    class Truth(LoggerDestination):
        def __init__(self):
            self.metrics = []

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, {name: float(value) for name, value in metrics.items()}))

    class LastBatch(Callback):
        at = 0.0

        def batch_end(self, state, logger):
            self.at = time.monotonic()

    healthy = Healthy()
    made = {"raising": Raising("raising"), "slow": Slow("slow"), "hung": Hung("hung")}
    faulty = [made[name] for name in faults]
    truth, last_batch = Truth(), LastBatch()
    bus_logger = LogBusLogger(backends=[healthy, "local", *faulty], close_timeout=close_timeout, log_stats=False)
    train_loader, _ = digits_loaders(batch_size=16)
    torch.manual_seed(0)
    trainer = Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                      loggers=[bus_logger, truth], callbacks=[last_batch], device="cpu", progress_bar=False, seed=0,
                      max_duration=f"{batches}ba", run_name="end-" + ("-".join(faults) or "healthy"))
    try:
        trainer.fit()
        trainer.close()
        ended = time.monotonic()
    finally:
        for backend in faulty:
            if isinstance(backend, Hung):
                backend.release.set()
    got = {(step, name, value) for step, values in healthy.metrics for name, value in values.items()}
    want = {(step, name, value) for step, values in truth.metrics for name, value in values.items()}
    stats = bus_logger.bus.stats()["backends"]
    return {
        "faults": faults or ["none"],
        "end_of_training_s": round(ended - last_batch.at, 3),
        "waits_ran_out": {name: backend.get("timed_out", "not counted") for name, backend in stats.items()},
        "healthy_metrics": f"{len(want & got)}/{len(want)}",
        "healthy_closed": healthy.finish is not None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--close-timeout", type=float, default=1.0)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logbus-end-") as folder:
        os.environ["LOGBUS_DIR"] = folder
        os.environ.setdefault("COMPOSER_RUN_DIRECTORY", folder)
        results = [run_scenario(faults, args.close_timeout, args.batches)
                   for faults in ([], ["raising"], ["slow"], ["hung"], ["raising", "slow", "hung"])]
    print(f"close_timeout {args.close_timeout} s, {args.batches} batches")
    for result in results:
        print(json.dumps(result))
    assert all(r["healthy_metrics"].split("/")[0] == r["healthy_metrics"].split("/")[1] and r["healthy_closed"]
               for r in results), "a healthy backend missed a record"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
