"""Library code of the select stage (tasks/select.py): replay of earlier rounds' training rows."""
