"""Errors meant for people: one line that names the file and what is wrong."""


class UserError(Exception):
    """Bad input (file, folder, option). The CLI prints it as one line, without a traceback."""


class DataError(UserError):
    """A data file or folder that training cannot use; the message names the file."""


def validation_message(exc: Exception) -> str:
    """One line from a pydantic ValidationError ("field.path: what is wrong; ..."), without pydantic's
    type codes and documentation links; other exceptions give their own text on one line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: {e.get('msg')}"
                             for e in errors())
        except Exception:  # noqa: BLE001 - fall back to the plain text
            pass
    return " ".join(str(exc).split())


def one_line(exc: BaseException) -> str:
    """An exception's text on one line, at most 200 characters (for per-file failure lists)."""
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def yaml_message(exc: Exception) -> str:
    """Where and what of a YAML parse error, on one line: "(line 2, column 7): expected ..."."""
    where = getattr(exc, "problem_mark", None)
    at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{at}: {problem}"
