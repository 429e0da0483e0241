"""Database plumbing: choosing and starting a database, migrations, verification, checks."""
