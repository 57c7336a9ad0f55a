"""The pure decision core: no I/O, no asyncio, no clock reads, no globals.

Everything here takes values and returns values, so it can be tested with tables
and reused unchanged by every edge adapter.
"""
