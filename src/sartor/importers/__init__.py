"""File imports: events, profiles (CRM), items and third-party signals."""
