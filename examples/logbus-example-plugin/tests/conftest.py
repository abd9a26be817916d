# The fixtures these tests use (recording_backend, register_plugin, logbus_run, tiny_composer_run)
# ship with logbus. pytest autoloads them wherever logbus is installed; asking by name as well keeps
# the tests working with PYTEST_DISABLE_PLUGIN_AUTOLOAD=1.
pytest_plugins = ["logbus.testing"]
