"""What every resource shares: settings, the database and its one commit point, errors, ids, the broker."""
