"""Records kafka-python cannot parse: lives in the SDK (``gateway_sdk.unreadable``: the responder skips them too);
re-exported here for the gateway's readers (reply reader, topic tails)."""
from gateway_sdk.unreadable import MAX_STEP, SkipUnreadable, Unidentified, batch_end

__all__ = ["MAX_STEP", "SkipUnreadable", "Unidentified", "batch_end"]
