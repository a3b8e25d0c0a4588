"""The config: one pydantic section per component, YAML text, dotted overrides, validation.

Rule: describes settings, does nothing with them; imports only files/ (to read the YAML) and the
ground floor. Each task's own data section lives with the task (tasks/<task>/config.py) and joins
through the task registry.
"""
