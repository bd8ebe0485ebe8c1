"""The queue manager: which message is tried when, over which connection, how fast, and what
happens after (retry, bounce, hold). The decisions (retry schedule, shaping, backoff, DSN
content) are pure functions tested with an injected clock; ``manager`` is the I/O around them.
"""
