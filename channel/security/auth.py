"""Who is this device? Token or resume ticket (or client certificate) → a verified identity.

Pure and synchronous: Ed25519 verification and AEAD opening take tens of
microseconds and need no I/O, so the gateway answers a HELLO in the same
event-loop turn it arrives in, and requests pipelined behind it are served
without waiting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from channel.rpc.model import DeviceContext
from channel.security.tickets import TicketError, TicketSealer
from channel.security.tokens import TokenError, TokenVerifier
from channel.wire import ErrorCode, Hello

MTLS_SCOPE = "mtls"


@dataclass(frozen=True, slots=True)
class AuthResult:
    device: DeviceContext
    session_id: bytes
    resumed: bool
    resume_ticket: bytes
    #: When the credential behind this session expires (unix s): the connection ends then.
    auth_expires_at: int


class AuthFailure(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Authenticator:
    def __init__(
        self,
        verifier: TokenVerifier,
        sealer: TicketSealer,
        *,
        ticket_ttl_s: int,
        zone: str = "",
        allow_client_certificates: bool = False,
        client_certificate_ttl_s: int = 86_400,
    ) -> None:
        self._verifier = verifier
        #: The token verifier, shared with the MQTT front (``channel.mqtt.auth``).
        self.verifier = verifier
        self._sealer = sealer
        self._ticket_ttl_s = ticket_ttl_s
        self._zone = zone
        self._allow_client_certificates = allow_client_certificates
        self._client_certificate_ttl_s = client_certificate_ttl_s

    def authenticate(self, hello: Hello, now: float, client_cert_cn: str | None) -> AuthResult:
        """Verify the HELLO's credential; raise ``AuthFailure`` with the code to send."""
        if hello.resume_ticket:
            try:
                ticket = self._sealer.open(
                    hello.resume_ticket, device_id=hello.device_id, app_id=hello.app_id, now=now
                )
            except TicketError as exc:
                if not hello.token:
                    raise AuthFailure(ErrorCode.TICKET_INVALID, exc.message) from None
            else:
                return self._result(
                    hello,
                    ticket.user_id,
                    ticket.scopes,
                    ticket.session_id,
                    ticket.auth_expires_at,
                    now,
                    resumed=True,
                )
        if hello.token:
            # Spec 7.2 "Device id from the token": a HELLO without a device id takes
            # it from the verified token (the codec let it through only with a token
            # and no ticket).
            try:
                claims = self._verifier.verify(
                    hello.token, device_id=hello.device_id or None, app_id=hello.app_id, now=now
                )
            except TokenError as exc:
                raise AuthFailure(exc.code, exc.message) from None
            if not hello.device_id:
                hello = replace(hello, device_id=claims.device_id)
            return self._result(
                hello,
                claims.user_id,
                claims.scopes,
                os.urandom(8),
                claims.expires_at,
                now,
                resumed=False,
            )
        if self._allow_client_certificates and client_cert_cn is not None:
            if client_cert_cn != hello.device_id:
                raise AuthFailure(
                    ErrorCode.FORBIDDEN, "client certificate is for a different device id"
                )
            expires = int(now) + self._client_certificate_ttl_s
            return self._result(
                hello, hello.device_id, (MTLS_SCOPE,), os.urandom(8), expires, now, resumed=False
            )
        raise AuthFailure(ErrorCode.AUTH_REQUIRED, "HELLO carries neither a token nor a ticket")

    def _result(
        self,
        hello: Hello,
        user_id: str,
        scopes: tuple[str, ...],
        session_id: bytes,
        auth_expires_at: int,
        now: float,
        *,
        resumed: bool,
    ) -> AuthResult:
        device = DeviceContext(
            device_id=hello.device_id,
            user_id=user_id,
            app_id=hello.app_id,
            app_version=hello.app_version,
            platform=hello.platform,
            zone=self._zone,
            scopes=scopes,
            session_id=session_id.hex(),
        )
        # The fields come from verified claims or an opened ticket: sealed as they are.
        sealed = self._sealer.seal_fields(
            user_id,
            scopes,
            session_id,
            min(int(now) + self._ticket_ttl_s, auth_expires_at),
            auth_expires_at,
            device_id=hello.device_id,
            app_id=hello.app_id,
        )
        return AuthResult(device, session_id, resumed, sealed, auth_expires_at)
