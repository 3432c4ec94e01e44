"""The configs shipped with litzoo, installed as package data: ``litzoo fit -c repvgg/digits`` finds
``configs/repvgg/digits.yaml`` here when the working directory has no such file."""
