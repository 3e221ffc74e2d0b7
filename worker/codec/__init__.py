"""The wire codecs: the oslo envelope, notifications, payloads, signing; pure."""
