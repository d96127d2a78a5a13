"""The value each config key takes when the file does not set it, each written once.

The models take their defaults from here, and so do the cross-key checks, which must assume the
same value for a key that is missing or wrong; code outside the config that needs the same
numbers (such as the delivery's retry policy) should import them rather than repeat them.
Values are in the form the code uses: durations in seconds, addresses as the file spells them.
Keys whose default means "not set" (None, an empty table or list, false) keep it in the model.
"""

from __future__ import annotations

from typing import Final

# [server]
SERVER_BIND: Final = "0.0.0.0:8443"
WEBHOOK_PATH: Final = "/webhooks"
MAX_BODY_BYTES: Final = 1048576
ANSWER_PROBES: Final = True

# [admin]
ADMIN_BIND: Final = "127.0.0.1:9310"

# [verify]; max_age defaults to spool.retention (see `load`), RETENTION when that is wrong.
SIGNATURE_HEADER: Final = "X-Respond-Flow-Signature"
SIGNATURE_ALGORITHM: Final = "rsa-pkcs1v15-sha256"
SIGNATURE_ENCODING: Final = "base64"

# [spool]; a relative path is relative to the config file.
SPOOL_PATH: Final = "spool.db"
RETENTION: Final = 7 * 86400.0

# [sinks.NAME] delivery settings: concurrency from 1 (in order) to this.
MAX_CONCURRENCY: Final = 256

# [retry]
RETRY_INITIAL: Final = 2.0
RETRY_MAX_DELAY: Final = 3600.0
RETRY_GIVE_UP_AFTER: Final = 86400.0
