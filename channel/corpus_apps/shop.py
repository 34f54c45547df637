"""Kaimono: an e-commerce app (Japanese, PascalCase JSON, identity inside every body).

Requests are signed: ``x-timestamp`` (Unix seconds), ``x-nonce`` (base64url),
``x-signature`` (base64 HMAC-SHA256); ``x-trace-id`` is 32 hex digits. The
user's id and session token travel inside every request body
(``"Auth": {"UserId", "SessionToken"}``), not in headers. Bodies are product
lists with Japanese names, yen prices and SKU codes.
"""

from __future__ import annotations

import base64
import random

from channel.corpus_apps.base import (
    Headers,
    Json,
    Operation,
    PushKind,
    Session,
    base62,
    digits,
    hex_digits,
    weighted,
)

_BASE_MS = 1_762_000_000_000
_ITEMS = (
    "無印良品 ボールペン 0.5mm",
    "ユニクロ エアリズムTシャツ",
    "キッチンタオル 6ロール",
    "コーヒー豆 ブラジル 500g",
    "ワイヤレスイヤホン ノイズキャンセリング",
    "抹茶ラテ 10本入り",
    "モバイルバッテリー 10000mAh",
    "文庫本 村上春樹 短編集",
    "加湿器 超音波式 3L",
    "ランニングシューズ 26.5cm",
    "お米 新潟県産コシヒカリ 5kg",
    "USB-C ケーブル 2m",
)
_SHOPS = ("Kaimonoストア", "東京雑貨店", "大阪電気", "北海道ファーム", "京都茶舗")
_CATEGORIES = ("家電", "食品", "ファッション", "本", "日用品", "スポーツ")


def _b64(rng: random.Random, n: int, url: bool) -> str:
    raw = rng.randbytes(n)
    if url:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return base64.b64encode(raw).decode()


def _auth(s: Session) -> Json:
    return {
        "UserId": s.facts["user"],
        "SessionToken": s.facts["session"],
        "DeviceId": s.facts["device"],
    }


def _product(s: Session, full: bool = False) -> Json:
    r = s.rng
    product = {
        "Sku": f"SKU-{digits(r, 8)}",
        "Name": r.choice(_ITEMS),
        "Price": r.choice([198, 480, 980, 1280, 1980, 2980, 4980, 12800]),
        "Currency": "JPY",
        "Shop": r.choice(_SHOPS),
        "Rating": round(r.uniform(3.2, 5.0), 1),
        "ImageUrl": f"https://img.kaimono.example/p/{hex_digits(r, 24)}.jpg",
        "InStock": r.random() < 0.92,
    }
    if full:
        product["Category"] = r.choice(_CATEGORIES)
        product["Description"] = "送料無料。" + r.choice(_ITEMS) + "、人気商品です。"
        product["Reviews"] = r.randint(0, 4000)
    return product


def _req_home(s: Session) -> Json:
    return {"Auth": _auth(s), "Page": "Top", "Banner": True}


def _resp_home(s: Session) -> Json:
    r = s.rng
    return {
        "Banners": [{"Id": base62(r, 8), "Title": "週末セール 最大50%OFF", "Link": "/sale"}],
        "Recommended": [_product(s) for _ in range(r.randint(2, 4))],
    }


def _req_search(s: Session) -> Json:
    return {"Auth": _auth(s), "Keyword": s.rng.choice(_ITEMS)[:6], "Sort": "Popular", "Page": 1}


def _resp_search(s: Session) -> Json:
    return {
        "Total": s.rng.randint(10, 5000),
        "Items": [_product(s) for _ in range(s.rng.randint(3, 5))],
    }


def _req_detail(s: Session) -> Json:
    return {"Auth": _auth(s), "Sku": f"SKU-{digits(s.rng, 8)}"}


def _resp_detail(s: Session) -> Json:
    return {
        "Product": _product(s, full=True),
        "Related": [_product(s) for _ in range(s.rng.randint(0, 2))],
    }


def _req_cart_add(s: Session) -> Json:
    return {"Auth": _auth(s), "Sku": f"SKU-{digits(s.rng, 8)}", "Quantity": s.rng.randint(1, 3)}


def _resp_cart(s: Session) -> Json:
    r = s.rng
    items = [{**_product(s), "Quantity": r.randint(1, 3)} for _ in range(r.randint(1, 3))]
    return {
        "Items": items,
        "Subtotal": sum(i["Price"] * i["Quantity"] for i in items),
        "ShippingFee": r.choice([0, 550]),
    }


def _req_cart(s: Session) -> Json:
    return {"Auth": _auth(s)}


def _req_order(s: Session) -> Json:
    return {
        "Auth": _auth(s),
        "PaymentMethod": weighted(s.rng, (("CreditCard", 0.6), ("PayPay", 0.3), ("Konbini", 0.1))),
        "AddressId": f"ADDR-{digits(s.rng, 6)}",
    }


def _resp_order(s: Session) -> Json:
    r = s.rng
    return {
        "OrderId": f"ORD-{digits(r, 12)}",
        "Status": "受付済み",
        "EstimatedDelivery": "2〜3日以内にお届け",
        "Total": r.randint(500, 30000),
    }


def _req_orders(s: Session) -> Json:
    return {"Auth": _auth(s), "Limit": 5}


def _resp_orders(s: Session) -> Json:
    r = s.rng
    return {
        "Orders": [
            {
                "OrderId": f"ORD-{digits(r, 12)}",
                "Status": r.choice(["発送済み", "配達完了", "準備中"]),
                "Items": [_product(s)],
            }
            for _ in range(r.randint(1, 3))
        ]
    }


def _push_shipped(s: Session) -> Json:
    r = s.rng
    return {
        "Type": "OrderShipped",
        "OrderId": f"ORD-{digits(r, 12)}",
        "Message": "ご注文の商品を発送しました",
        "TrackingNo": digits(r, 12),
    }


def _push_sale(s: Session) -> Json:
    return {
        "Type": "Campaign",
        "Title": "タイムセール開始！",
        "Body": s.rng.choice(_ITEMS) + " が今だけ特価",
        "Url": "/sale/" + base62(s.rng, 6),
    }


def _push_price(s: Session) -> Json:
    return {
        "Type": "PriceDrop",
        "Product": _product(s),
        "OldPrice": s.rng.choice([1980, 2980, 4980]),
    }


class ShopApp:
    name = "shop"
    description = "Kaimono: e-commerce, Japanese, signed requests, identity inside the body"
    operations = (
        Operation("shop.home", _req_home, _resp_home),
        Operation("shop.search", _req_search, _resp_search),
        Operation("shop.product.detail", _req_detail, _resp_detail),
        Operation("shop.cart.get", _req_cart, _resp_cart),
        Operation("shop.cart.add", _req_cart_add, _resp_cart),
        Operation("shop.orders.list", _req_orders, _resp_orders),
        Operation("shop.order.create", _req_order, _resp_order),
    )
    launch_ops = ("shop.home", "shop.cart.get")
    push_kinds = (
        PushKind("order.shipped", 2.0, _push_shipped),
        PushKind("campaign.sale", 3.0, _push_sale),
        PushKind("watch.price", 1.5, _push_price),
    )

    def new_session(self, rng: random.Random) -> Session:
        return Session(
            rng,
            _BASE_MS + rng.randint(0, 30 * 86_400_000),
            {
                "user": f"K{digits(rng, 10)}",
                "session": base62(rng, 48),
                "device": hex_digits(rng, 16, upper=True),
                "platform": weighted(rng, (("ios", 0.5), ("android", 0.5))),
                "version": f"12.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
            },
        )

    def request_headers(self, s: Session, op: Operation) -> Headers:
        r = s.rng
        return [
            ["x-trace-id", hex_digits(r, 32)],
            ["x-timestamp", str(s.clock_ms // 1000)],
            ["x-nonce", _b64(r, 16, url=True)],
            ["x-signature", _b64(r, 32, url=False)],
            ["x-platform", s.facts["platform"]],
            ["x-app-ver", s.facts["version"]],
            ["content-type", "application/json"],
        ]

    def response_headers(self, s: Session, op: Operation, request: Headers) -> Headers:
        headers = [["x-trace-id", request[0][1]], ["x-server-time", str(s.clock_ms // 1000)]]
        if op.name in ("shop.home", "shop.search"):
            headers.append(["cache-control", "private, max-age=60"])
        return headers

    def response_envelope(self, s: Session, op: Operation, data: Json) -> tuple[int, Json]:
        roll = s.rng.random()
        if roll < 0.02:
            return 0, {"ResultCode": "E1001", "ResultMessage": "在庫がありません", "Data": None}
        return 0, {"ResultCode": "S0000", "ResultMessage": "OK", "Data": data}

    def push_headers(self, s: Session, kind: PushKind) -> Headers:
        return [["x-push-time", str(s.clock_ms // 1000)], ["x-campaign", base62(s.rng, 6)]]

    def push_message_id(self, s: Session) -> str:
        return hex_digits(s.rng, 24)
