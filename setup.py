"""Packaging of the one import root: the four room folders stay at the top of the repository and
install as ``litzoo.framework``, ``litzoo.modules``, ``litzoo.callbacks`` and ``litzoo.datamodules``;
``configs/`` installs as ``litzoo.configs`` (package data). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

ROOMS = ("framework", "modules", "callbacks", "datamodules", "configs")

package_dir = {"litzoo": "litzoo"}
packages = find_packages(include=["litzoo", "litzoo.*"])
for room in ROOMS:
    package_dir[f"litzoo.{room}"] = room
    packages += [f"litzoo.{name}" for name in find_packages(include=[room, f"{room}.*"])]

setup(packages=packages, package_dir=package_dir, package_data={"litzoo.configs": ["*/*.yaml", "*/*.json"]})
