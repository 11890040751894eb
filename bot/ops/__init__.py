"""The operator's surface: the HTTP endpoint, metrics, the status page, the healthcheck, usage reports."""
