"""The apk adapter: Alpine, Wolfi and Chainguard images (apk-tools 2 and 3 databases, v2 packages)."""
