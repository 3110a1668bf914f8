"""Data: the FO1 record format (`records`) and the procedural ShapeWorld (`shapeworld`)."""
from vlmfo1.data.records import FO1Record, RecordError, read_records, write_records

__all__ = ["FO1Record", "RecordError", "read_records", "write_records"]
