# The contract plugin (--abe-redis-contract-timeout) comes with `abe_redis_testing`, and
# `pytester` from the root conftest.
