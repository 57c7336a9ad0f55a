"""The usage ledger: one record per request served under a licence.

`record` defines a record and its canonical, hash-chained line; `file` appends
records to a local file in batches and verifies and reads it back; `export`
aggregates records per licensee, licence, content section or content owner and
renders the result as CSV or JSON. See docs/ledger.md.
"""
