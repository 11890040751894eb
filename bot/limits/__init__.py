"""Server limits as data: the operator's ceilings, admins' changes, and the check of each request."""
