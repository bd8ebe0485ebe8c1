"""Outbound delivery: routes and next hops, MX resolution, TLS policy, and the asyncio adapter
that drives the sans-I/O client machine (:mod:`mailwarden.smtp.client`) over a socket.

Every failure on the way out is a :class:`~mailwarden.delivery.errors.DeliveryError` carrying
the reply it stands for, temporary (4xx: retry) or permanent (5xx: bounce), so the queue
manager decides from one small family of errors (httpcore style: backend errors mapped at the
edge).
"""
