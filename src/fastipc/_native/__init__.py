"""Backend operations that call into the compiled module ``fastipc._fastipc``."""
