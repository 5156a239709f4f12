"""The wire contract between the gateway and the services: it lives in the SDK (``gateway_sdk.protocol``), so the
gateway and every Python service share one source. Re-exported here: the gateway imports ``gateway.protocol``."""
from gateway_sdk.protocol import *  # noqa: F403 - the whole contract: every name of gateway_sdk.protocol.__all__
from gateway_sdk.protocol import __all__  # noqa: F401 - and the same list, for `from gateway.protocol import *`
