"""Test-support helpers: a throwaway PostgreSQL cluster and a fault-injecting TCP proxy."""
