"""The database: the SQLite writer, the job ledger, server limits, migrations, backups and the lock."""
