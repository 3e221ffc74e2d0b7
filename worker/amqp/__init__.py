"""The AMQP side: the only package that imports kombu or py-amqp."""
