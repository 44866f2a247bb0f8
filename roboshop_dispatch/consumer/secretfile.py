"""How a file holding the password is read: the systemd credential by the consumer, and the same
way by dispatchctl (``--amqp-pass-file``, the installed credential), so both agree on the password.
Standard library only (the consumer is bundled alone; dispatchctl reads it without pika)."""

MAX_SIZE = 64 * 1024  # a password file is small; anything larger is refused unread


def strip_final_newline(text: str) -> str:
    """``text`` without one final line ending (``\\n`` or ``\\r\\n``): the file's, not the password's."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text
