"""lmforge: the whole pipeline that makes a ChatGPT-like assistant, small enough to read and run on a laptop."""

__version__ = "0.1.0"
