# The lead lists the contract plugin in abe_redis_testing.pytest_plugins; until then this keeps
# --abe-redis-contract-timeout available to the tests here.
pytest_plugins = ["pytester", "abe_redis_testing.contract._plugin"]
