"""Package discovery for llmctl; every other setting is in pyproject.toml.

commands/ and profiles/ stand at the top of the repository, where a reader looks for a command and its
profiles, but ship inside the package as `llmctl.cli` and `llmctl.builtin_profiles` (docs/architecture.md).
pyproject.toml's `packages.find` cannot rename folders, so the packages are found here: every package under
llmctl/, the commands folder, and the profiles folder with each command's profile folder (a namespace package
holding only YAML; `merge-lora` is not an importable name and ships as package data of its parent).
"""

from setuptools import find_namespace_packages, find_packages, setup

PACKAGE_DIR = {"llmctl.cli": "commands", "llmctl.builtin_profiles": "profiles"}
PROFILE_FOLDERS = [f"llmctl.builtin_profiles.{name}" for name in find_namespace_packages(where="profiles")]

setup(
    packages=[
        *find_packages(include=["llmctl", "llmctl.*"]),
        "llmctl.cli",
        "llmctl.builtin_profiles",
        *PROFILE_FOLDERS,
    ],
    package_dir=PACKAGE_DIR,
)
