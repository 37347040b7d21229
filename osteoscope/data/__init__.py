"""Data layer: manifest, readers, splits, transforms, datasets and femoral-head localisation."""
