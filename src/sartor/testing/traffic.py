"""Realistic live traffic for load tests and benchmarks: a long-tailed crowd of shoppers on
one or two devices who sign in now and then (identity links and merges), browse, add to
cart, order and refund, with trait updates using ``$set``/``$set_once``/``$unset``."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

CATEGORIES = ("Shoes", "Shirts", "Jackets", "Bags", "Hats", "Socks", "Watches", "Belts")
BRANDS = ("Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella")
PLANS = ("free", "plus", "pro")


@dataclass
class Person:
    user_id: str | None  # None: never signs in
    devices: list[str]  # one anonymousId per device
    signed_in: set[int] = field(default_factory=set)


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class Traffic:
    """Segment messages from a seeded crowd of ``people``.

    ``second_devices`` gives about half of them a second anonymousId (so signing in merges
    profiles); ``revenue_share`` of orders state their revenue (the rest leave it to the
    products); ``email_share`` of sign-ins carry an email trait; messageIds start with
    ``prefix``."""

    def __init__(
        self,
        people: int,
        seed: int,
        *,
        second_devices: bool = True,
        prefix: str = "traffic",
        revenue_share: float = 1.0,
        email_share: float = 0.0,
    ) -> None:
        self.rng = rng = random.Random(seed)
        self.prefix = prefix
        self.revenue_share = revenue_share
        self.email_share = email_share
        self.crowd = [
            Person(
                f"user-{i:05d}" if rng.random() < 0.7 else None,
                [
                    str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    for _ in range(rng.choice((1, 2)) if second_devices else 1)
                ],
            )
            for i in range(people)
        ]
        self.cum = list(itertools.accumulate(rng.paretovariate(1.5) for _ in self.crowd))

    def _product(self) -> dict[str, Any]:
        n = self.rng.randrange(1, 1500)
        return {
            "product_id": f"prod-{n:05d}",
            "name": f"{BRANDS[n % 6]} {CATEGORIES[n % 8]} {n}",
            "brand": BRANDS[n % 6],
            "category": CATEGORIES[n % 8],
            "price": round(4.5 + (n % 180) * 0.85, 2),
        }

    def _track(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            return "Product Viewed", self._product()
        if r < 0.75:
            return "Product Added", {**self._product(), "quantity": rng.randrange(1, 4)}
        if r < 0.81:
            return "Checkout Started", {"value": round(rng.uniform(10, 300), 2)}
        if r < 0.88:
            products = [{**self._product(), "quantity": rng.randrange(1, 3)} for _ in range(3)]
            del products[rng.randrange(0, 3) + 1 :]
            props: dict[str, Any] = {
                "order_id": f"o-{rng.getrandbits(40):010x}",
                "products": products,
            }
            if rng.random() < self.revenue_share:
                props["revenue"] = round(sum(p["price"] * p["quantity"] for p in products), 2)
            return "Order Completed", props
        if r < 0.90:
            return "Order Refunded", {"order_id": "o-x", "total": round(rng.uniform(5, 120), 2)}
        return "Product List Viewed", {"category": rng.choice(CATEGORIES)}

    def _traits(self, person: Person) -> dict[str, Any]:
        rng = self.rng
        r = rng.random()
        if r < 0.4:
            return {"plan": rng.choice(PLANS), "name": f"Person {person.user_id}"}
        if r < 0.7:
            return {"$set": {"plan": rng.choice(PLANS), "visits": rng.randrange(100)}}
        if r < 0.9:
            return {"$set_once": {"first_source": rng.choice(("ads", "seo", "mail"))}}
        return {"$unset": ["visits"]}

    def event(self, ts: int, person: Person | None = None) -> dict[str, Any]:
        """One message at time ``ts`` from ``person`` (default: drawn from the long tail)."""
        rng = self.rng
        if person is None:
            person = rng.choices(self.crowd, cum_weights=self.cum)[0]
        device = rng.randrange(len(person.devices))
        msg: dict[str, Any] = {
            "messageId": f"{self.prefix}-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
            "anonymousId": person.devices[device],
            "timestamp": iso(ts),
            "context": {"ip": f"203.0.113.{rng.randrange(1, 255)}", "locale": "en-US"},
        }
        signed_in = device in person.signed_in
        if person.user_id and not signed_in and rng.random() < 0.08:
            person.signed_in.add(device)  # signs in on this device: identify links (or merges)
            msg.update(type="identify", userId=person.user_id, traits=self._traits(person))
            if self.email_share and rng.random() < self.email_share:
                msg["traits"]["email"] = f"{person.user_id}@example.com"
        else:
            if signed_in:
                msg["userId"] = person.user_id
            r = rng.random()
            if signed_in and r < 0.03:
                msg.update(type="identify", traits=self._traits(person))
            elif r < 0.15:
                msg.update(type="page", name="Home", properties={"path": "/"})
            else:
                name, props = self._track()
                msg.update(type="track", event=name, properties=props)
        return msg

    def history(self, n: int, end_ms: int, span_ms: int = 86_400_000) -> list[dict[str, Any]]:
        """``n`` messages spread evenly over ``span_ms`` before ``end_ms``."""
        step = span_ms / n
        return [self.event(int(end_ms - span_ms + i * step)) for i in range(n)]
