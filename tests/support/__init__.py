"""Real test hosts: a throwaway RabbitMQ node and a systemd-nspawn host (no mocks)."""
