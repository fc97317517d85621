"""HTTP Basic authentication for SD-Train's API routes, with the WebUI's --api-auth format.

No `from __future__ import annotations` here: FastAPI reads the dependency's annotations at runtime."""

from secrets import compare_digest


def parse_credentials(spec: str | None) -> dict[str, str]:
    """ "user:password[,user:password...]" -> {user: password}; the password may contain ':'."""
    if not spec:
        return {}
    return dict(entry.split(":", 1) for entry in spec.split(",") if ":" in entry)


def basic_auth_dependencies(spec: str | None) -> list:
    """[Depends(check)] when credentials are configured, else [] (an open route, as the WebUI's API without
    --api-auth)."""
    credentials = parse_credentials(spec)
    if not credentials:
        return []
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    def check_auth(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:  # noqa: B008 (FastAPI's idiom)
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password.encode(), expected.encode()):
            return True
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    return [Depends(check_auth)]
