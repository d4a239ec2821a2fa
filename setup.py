"""Packaging beyond pyproject.toml: the mail templates ship inside the wheel.

The templates stay in the top-level ``templates/`` (staff and engineers edit them there);
at build time that directory becomes the package ``bot.templates`` (package-dir mapping),
its ``*.txt`` files package data, read at run time with importlib.resources
(``bot.adapters.mailout.shipped_templates_dir``). Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    # Namespace discovery so that the data-only directories bot/web/templates and
    # bot/web/static (no __init__.py) are packages in their own right: listed, their
    # files declared below, and setuptools has nothing to warn about ("Package would be
    # ignored").
    packages=find_namespace_packages(include=["bot", "bot.*"], exclude=["*.__pycache__"]) + ["bot.templates"],
    package_dir={"bot.templates": "templates"},
    # bot.web: the staff site's page templates and its one stylesheet (bot/web/).
    package_data={"bot.templates": ["*.txt"], "bot.web.templates": ["*.html"], "bot.web.static": ["*"]},
)
