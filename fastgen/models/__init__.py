"""The model zoo built on fastgen.nn -- built in the issues after the foundation."""
