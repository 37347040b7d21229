"""osteoscope: AI diagnosis of bone disorders from radiographs, CT and MR."""

__version__ = "0.1.0"
