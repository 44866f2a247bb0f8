"""The consumer's one error base. The consumer is bundled alone with pika and imports nothing of
dispatchctl, so it does not share :class:`roboshop_dispatch.errors.DispatchctlError`."""


class ConsumerError(ValueError):
    """A value the consumer refuses: a setting (config.ConfigError) or a message (orders.InvalidMessage)."""
