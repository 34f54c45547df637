"""Synthetic mobile traffic: RPC requests, responses and server pushes.

The corpus imitates one day-in-the-life of a payment super-app (modelled on
Alipay): a device connects, fires its launch calls (config, home feed, unread
count), then the user pays, checks bills, claims coupons ... while the server
pushes payment notices and marketing. Benchmarks (``stress/``) measure bytes on
the wire over it and ``channel dict train`` learns compression dictionaries
from it, so its shape matters more than its exact values.

Output is JSON Lines, one message per line, the messages of one session
(= one app launch on one connection) contiguous and in order::

    {"session": 7, "kind": "request",  "op": "account.balance.get",
     "headers": [["trace-id", "..."], ...], "body": {...}}
    {"session": 7, "kind": "response", "op": "account.balance.get", "status": 0,
     "headers": [...], "body": {"code": "SUCCESS", "data": {...}}}
    {"session": 7, "kind": "push", "message_id": "<24 hex>", "topic": "payment.received",
     "headers": [...], "body": {...}}

Headers are the application-level ones only; device id, token, app version and
platform belong to the connection (HELLO) and are not repeated per message.
Every response directly follows its request; pushes fall between pairs.
``status`` is an MMTP RESPONSE status (``channel.wire.errors.ErrorCode``).

Train/test convention: the generator is a pure function of ``seed``; every
request carries a fresh 128-bit trace id, so two seeds give disjoint samples.
Train dictionaries on seed 1 and measure on seed 2.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from channel.wire.errors import ErrorCode

Json = Any
Message = dict[str, Any]

DEFAULT_PUSH_FRACTION = 0.10
TRAIN_SEED = 1
HELDOUT_SEED = 2

# 2024-02-09 00:00 Asia/Shanghai: Spring Festival eve, the red-envelope peak.
_EPOCH_BASE_MS = 1_707_408_000_000
_SPREAD_MS = 3 * 24 * 3600 * 1000
_ZIPF_EXPONENT = 1.0

_LOCALES = (("zh-CN", 80), ("en-US", 9), ("zh-HK", 6), ("zh-TW", 3), ("ja-JP", 2))
_CITIES = (
    ("310100", "上海"),
    ("330100", "杭州"),
    ("110100", "北京"),
    ("440300", "深圳"),
    ("440100", "广州"),
    ("510100", "成都"),
    ("420100", "武汉"),
    ("320100", "南京"),
)
_MERCHANTS = (
    "瑞幸咖啡",
    "星巴克 Starbucks",
    "肯德基 KFC",
    "麦当劳 McDonald's",
    "全家 FamilyMart",
    "美宜佳便利店",
    "盒马鲜生",
    "永辉超市",
    "滴滴出行",
    "饿了么",
    "海底捞火锅",
    "华联超市",
    "罗森 LAWSON",
    "喜茶 HEYTEA",
    "蜜雪冰城",
    "中国石化加油站",
    "国家电网",
    "杭州地铁",
)
_BILL_CATEGORIES = (
    ("FOOD", "餐饮美食"),
    ("SHOP", "日用百货"),
    ("TRAFFIC", "交通出行"),
    ("TRANSFER", "转账红包"),
    ("UTILITY", "生活缴费"),
    ("ENTERTAIN", "休闲娱乐"),
    ("INVEST", "投资理财"),
)
_PAY_METHODS = (
    ("BALANCE", "账户余额"),
    ("YUEBAO", "余额宝"),
    ("HUABEI", "花呗"),
    ("DEBIT_CARD", "招商银行储蓄卡"),
    ("CREDIT_CARD", "中信银行信用卡"),
)
_DISTRICTS = ("西湖区", "浦东新区", "南山区", "朝阳区", "天河区")
_NICKNAMES = ("小明", "Lily", "阿杰", "王芳", "Kevin", "陈晨", "张伟", "李娜", "Momo", "老周")
_MINI_APPS = (
    ("2021001100000001", "饿了么"),
    ("2018090361291003", "高德打车"),
    ("2021002177681234", "哈啰出行"),
    ("2019011163047005", "城市服务"),
    ("2021003115612345", "蚂蚁森林"),
    ("2018122062580123", "芭芭农场"),
)
_COUPON_TITLES = (
    "满20减5元",
    "5元无门槛红包",
    "外卖满30减8",
    "地铁乘车8折",
    "便利店立减2元",
    "话费充值满50减3",
    "Starbucks 9折券",
    "生活缴费立减1元",
)


def _hex(rng: random.Random, n_chars: int) -> str:
    return f"{rng.getrandbits(4 * n_chars):0{n_chars}x}"


def _digits(rng: random.Random, n_digits: int) -> str:
    return "".join(rng.choices("0123456789", k=n_digits))


def _amount(rng: random.Random, low: float, high: float) -> str:
    # Spending is skewed: many small payments, few large ones.
    value = low * (high / low) ** (rng.random() ** 1.6)
    return f"{value:.2f}"


def _spm(rng: random.Random) -> str:
    # Page-tracking position "a<site>.b<page>.c<block>", as mobile analytics send it.
    return f"a{rng.randint(1, 99)}.b{rng.randint(1, 999)}.c{rng.randint(1, 99)}"


def _weighted(rng: random.Random, pairs: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


@dataclass
class _Session:
    """Per-launch state, so bodies of one session agree with each other."""

    rng: random.Random
    user_id: str
    nickname: str
    locale: str
    city_code: str
    city_name: str
    clock_ms: int
    payee_ids: list[str] = field(default_factory=list)
    last_trade_no: str = ""

    def tick(self, low_ms: int, high_ms: int) -> int:
        self.clock_ms += self.rng.randint(low_ms, high_ms)
        return self.clock_ms

    def zh(self, chinese: str, english: str) -> str:
        return english if self.locale == "en-US" else chinese

    def trade_no(self) -> str:
        day = f"202402{9 + (self.clock_ms - _EPOCH_BASE_MS) // 86_400_000:02d}"
        self.last_trade_no = day + "22001" + _digits(self.rng, 16)
        return self.last_trade_no

    def new_user_id(self) -> str:
        return "2088" + _digits(self.rng, 12)


Builder = Callable[[_Session], Json]


@dataclass(frozen=True)
class _Operation:
    name: str
    biz_scene: str
    sign_probability: float
    request: Builder
    response: Builder
    cache_control: str | None = None


# --- request / response bodies, one pair per operation ----------------------


def _req_user(s: _Session) -> Json:
    return {"userId": s.user_id}


def _req_grid(s: _Session) -> Json:
    return {"scene": "HOME", "gridVersion": s.rng.randint(10, 99)}


def _resp_ok(s: _Session) -> Json:
    return {"success": True}


def _req_balance(s: _Session) -> Json:
    return {"userId": s.user_id, "assetTypes": ["BALANCE", "YUEBAO", "HUABEI"]}


def _resp_balance(s: _Session) -> Json:
    r = s.rng
    return {
        "balance": _amount(r, 0.5, 20000),
        "currency": "CNY",
        "yuebao": {
            "amount": _amount(r, 10, 200000),
            "yesterdayProfit": _amount(r, 0.01, 30),
            "sevenDayYield": f"{r.uniform(1.5, 2.4):.4f}",
        },
        "huabei": {
            "available": _amount(r, 100, 30000),
            "limit": "30000.00",
            "repayDate": "2024-03-10",
        },
        "updatedAt": s.clock_ms,
    }


def _resp_profile(s: _Session) -> Json:
    r = s.rng
    return {
        "userId": s.user_id,
        "nickname": s.nickname,
        "avatar": f"https://gw.alipayobjects.com/zos/avatar/{_hex(r, 16)}.png",
        "phone": f"1{r.randint(30, 99)}******{_digits(r, 2)}",
        "realNameVerified": True,
        "memberLevel": r.choice(["PRIMARY", "GOLDEN", "PLATINUM", "DIAMOND"]),
        "city": {"code": s.city_code, "name": s.city_name},
    }


def _resp_security(s: _Session) -> Json:
    r = s.rng
    return {
        "level": r.choice(["HIGH", "MEDIUM"]),
        "paymentPassword": True,
        "faceId": r.random() < 0.7,
        "trustedDevices": [
            {
                "name": r.choice(["iPhone 15", "HUAWEI Mate 60", "Xiaomi 14", "iPad"]),
                "lastLogin": s.clock_ms - r.randint(0, 10**9),
            }
            for _ in range(r.randint(1, 3))
        ],
    }


def _req_paycode(s: _Session) -> Json:
    return {"userId": s.user_id, "payMethod": s.rng.choice(_PAY_METHODS)[0], "codeType": "QR"}


def _resp_paycode(s: _Session) -> Json:
    code = "28" + _digits(s.rng, 16)
    return {
        "payCode": code,
        "barCode": code,
        "expireSeconds": 60,
        "refreshIntervalMs": 30000,
        "generatedAt": s.clock_ms,
    }


def _req_cashier(s: _Session) -> Json:
    r = s.rng
    return {
        "tradeNo": s.trade_no(),
        "amount": _amount(r, 1, 3000),
        "currency": "CNY",
        "merchantId": "2088" + _digits(r, 12),
        "bizType": "TRADE",
    }


def _resp_cashier(s: _Session) -> Json:
    r = s.rng
    methods = r.sample(_PAY_METHODS, k=r.randint(2, 5))
    return {
        "tradeNo": s.last_trade_no or s.trade_no(),
        "orderTitle": r.choice(_MERCHANTS),
        "amount": _amount(r, 1, 3000),
        "currency": "CNY",
        "payMethods": [
            {
                "type": code,
                "name": name,
                "available": r.random() < 0.9,
                "recommended": i == 0,
                "icon": f"https://mdn.alipayobjects.com/pay/{code.lower()}.png",
            }
            for i, (code, name) in enumerate(methods)
        ],
        "needPassword": r.random() < 0.6,
        "faceAvailable": True,
        "discount": {"title": r.choice(_COUPON_TITLES), "amount": _amount(r, 0.5, 10)}
        if r.random() < 0.3
        else None,
    }


def _req_order_create(s: _Session) -> Json:
    r = s.rng
    return {
        "tradeNo": s.last_trade_no or s.trade_no(),
        "amount": _amount(r, 1, 3000),
        "currency": "CNY",
        "payMethod": r.choice(_PAY_METHODS)[0],
        "merchantId": "2088" + _digits(r, 12),
        "subject": r.choice(_MERCHANTS),
        "clientTime": s.clock_ms,
        "verifyType": r.choice(["PASSWORD", "FACE", "FINGERPRINT"]),
    }


def _resp_order_create(s: _Session) -> Json:
    r = s.rng
    return {
        "tradeNo": s.last_trade_no,
        "tradeStatus": "TRADE_SUCCESS",
        "payAmount": _amount(r, 1, 3000),
        "gmtPayment": s.clock_ms,
        "pointsEarned": r.randint(0, 50),
    }


def _req_order_query(s: _Session) -> Json:
    return {"tradeNo": s.last_trade_no or s.trade_no()}


def _resp_order_query(s: _Session) -> Json:
    r = s.rng
    return {
        "tradeNo": s.last_trade_no,
        "tradeStatus": r.choice(
            ["TRADE_SUCCESS", "TRADE_SUCCESS", "WAIT_BUYER_PAY", "TRADE_CLOSED"]
        ),
        "totalAmount": _amount(r, 1, 3000),
        "subject": r.choice(_MERCHANTS),
    }


def _resp_pay_methods(s: _Session) -> Json:
    r = s.rng
    return {
        "methods": [
            {
                "type": code,
                "name": name,
                "tail": _digits(r, 4) if "CARD" in code else None,
                "limitPerTx": "50000.00",
                "enabled": True,
            }
            for code, name in _PAY_METHODS
        ],
        "defaultMethod": "BALANCE",
    }


def _req_payee_lookup(s: _Session) -> Json:
    r = s.rng
    return {"account": f"1{r.randint(30, 99)}{_digits(r, 8)}", "accountType": "PHONE"}


def _resp_payee_lookup(s: _Session) -> Json:
    payee = s.new_user_id()
    s.payee_ids.append(payee)
    return {
        "payeeId": payee,
        "maskedName": "*" + s.rng.choice("明芳伟娜杰晨"),
        "avatar": f"https://gw.alipayobjects.com/zos/avatar/{_hex(s.rng, 16)}.png",
        "verified": True,
    }


def _req_transfer(s: _Session) -> Json:
    r = s.rng
    payee = s.payee_ids[-1] if s.payee_ids else s.new_user_id()
    return {
        "payeeId": payee,
        "amount": _amount(r, 1, 5000),
        "currency": "CNY",
        "memo": r.choice(["", "饭钱", "房租", "AA", "谢谢", "red packet"]),
        "payMethod": r.choice(_PAY_METHODS)[0],
        "outBizNo": _hex(r, 32),
    }


def _resp_transfer(s: _Session) -> Json:
    return {
        "orderId": s.trade_no(),
        "status": "SUCCESS",
        "arriveTime": s.clock_ms,
        "arriveDesc": s.zh("预计2小时内到账", "Arrives within 2 hours"),
    }


def _resp_recent_payees(s: _Session) -> Json:
    r = s.rng
    return {
        "payees": [
            {
                "payeeId": s.new_user_id(),
                "name": r.choice(_NICKNAMES),
                "lastTransferAt": s.clock_ms - r.randint(0, 30 * 86_400_000),
            }
            for _ in range(r.randint(2, 8))
        ]
    }


def _req_bill_list(s: _Session) -> Json:
    r = s.rng
    return {
        "userId": s.user_id,
        "pageNum": r.choice([1, 1, 1, 2, 3]),
        "pageSize": 20,
        "month": "2024-02",
        "category": r.choice(["ALL", "ALL", "FOOD"]),
    }


def _bill_item(s: _Session) -> Json:
    r = s.rng
    code, name = r.choice(_BILL_CATEGORIES)
    return {
        "tradeNo": s.trade_no(),
        "title": r.choice(_MERCHANTS),
        "amount": "-" + _amount(r, 1, 800),
        "category": code,
        "categoryName": name,
        "time": s.clock_ms - r.randint(0, 20 * 86_400_000),
        "status": "SUCCESS",
    }


def _resp_bill_list(s: _Session) -> Json:
    r = s.rng
    return {
        "items": [_bill_item(s) for _ in range(r.randint(3, 14))],
        "hasMore": r.random() < 0.6,
        "monthExpense": _amount(r, 100, 20000),
        "monthIncome": _amount(r, 10, 30000),
    }


def _resp_bill_detail(s: _Session) -> Json:
    item = _bill_item(s)
    item.update(
        {
            "payMethod": s.rng.choice(_PAY_METHODS)[1],
            "merchantOrderNo": _hex(s.rng, 20),
            "remark": "",
            "canRefund": s.rng.random() < 0.2,
        }
    )
    return item


def _resp_month_summary(s: _Session) -> Json:
    r = s.rng
    return {
        "month": "2024-02",
        "expense": _amount(r, 100, 20000),
        "income": _amount(r, 10, 3e4),
        "categories": [
            {"code": c, "name": n, "amount": _amount(r, 10, 5000)} for c, n in _BILL_CATEGORIES
        ],
    }


def _resp_coupon_list(s: _Session) -> Json:
    r = s.rng
    return {
        "coupons": [
            {
                "couponId": _digits(r, 18),
                "title": r.choice(_COUPON_TITLES),
                "amount": _amount(r, 1, 20),
                "threshold": r.choice(["0.00", "20.00", "30.00", "50.00"]),
                "validUntil": s.clock_ms + r.randint(1, 30) * 86_400_000,
                "status": "UNUSED",
            }
            for _ in range(r.randint(0, 6))
        ],
        "total": r.randint(0, 20),
    }


def _req_coupon_claim(s: _Session) -> Json:
    return {"campaignId": "CP" + _digits(s.rng, 12), "userId": s.user_id, "channel": "HOME_BANNER"}


def _resp_coupon_claim(s: _Session) -> Json:
    return {"couponId": _digits(s.rng, 18), "title": s.rng.choice(_COUPON_TITLES), "claimed": True}


def _req_coupon_match(s: _Session) -> Json:
    return {"tradeNo": s.last_trade_no or s.trade_no(), "amount": _amount(s.rng, 1, 500)}


def _resp_coupon_match(s: _Session) -> Json:
    r = s.rng
    return {
        "usable": [
            {
                "couponId": _digits(r, 18),
                "title": r.choice(_COUPON_TITLES),
                "deduct": _amount(r, 0.5, 10),
            }
            for _ in range(r.randint(0, 3))
        ]
    }


def _resp_points(s: _Session) -> Json:
    r = s.rng
    return {
        "points": r.randint(0, 80000),
        "expiringPoints": r.randint(0, 2000),
        "expireDate": "2024-12-31",
        "level": "GOLDEN",
    }


def _resp_tasks(s: _Session) -> Json:
    r = s.rng
    titles = ("逛一逛得积分", "Pay with Alipay 3 times", "蚂蚁森林浇水", "签到领积分", "看视频15秒")
    return {
        "tasks": [
            {
                "taskId": "T" + _digits(r, 8),
                "title": t,
                "points": r.choice([5, 10, 50]),
                "done": r.random() < 0.4,
            }
            for t in r.sample(titles, k=r.randint(2, 5))
        ]
    }


def _req_nearby(s: _Session) -> Json:
    r = s.rng
    return {
        "cityCode": s.city_code,
        "lng": f"{r.uniform(120.0, 121.6):.6f}",
        "lat": f"{r.uniform(30.1, 31.3):.6f}",
        "radius": 2000,
        "category": "FOOD",
    }


def _resp_nearby(s: _Session) -> Json:
    r = s.rng
    return {
        "stores": [
            {
                "storeId": "S" + _digits(r, 14),
                "name": r.choice(_MERCHANTS),
                "distance": r.randint(50, 2000),
                "rating": f"{r.uniform(3.5, 5.0):.1f}",
                "tags": r.sample(["支付宝支付", "满减", "Free WiFi", "24小时", "可外卖"], k=2),
            }
            for _ in range(r.randint(3, 10))
        ]
    }


def _resp_store(s: _Session) -> Json:
    r = s.rng
    return {
        "storeId": "S" + _digits(r, 14),
        "name": r.choice(_MERCHANTS),
        "address": f"{s.city_name}市{r.choice(_DISTRICTS)}文三路{r.randint(1, 999)}号",
        "openHours": "08:00-22:00",
        "phone": "0571-" + _digits(r, 8),
        "promotions": [r.choice(_COUPON_TITLES)],
    }


def _req_miniapp(s: _Session) -> Json:
    app_id, _ = s.rng.choice(_MINI_APPS)
    return {"appId": app_id, "version": f"1.{s.rng.randint(0, 40)}.{s.rng.randint(0, 9)}"}


def _resp_miniapp_config(s: _Session) -> Json:
    r = s.rng
    app_id, name = r.choice(_MINI_APPS)
    return {
        "appId": app_id,
        "name": name,
        "packageUrl": f"https://appx.alipay.com/{app_id}/{_hex(r, 12)}.amr",
        "packageSize": r.randint(10**5, 4 * 10**6),
        "permissions": ["location", "userInfo"],
        "subPackages": r.randint(0, 4),
    }


def _resp_miniapp_check(s: _Session) -> Json:
    return {"allowed": True, "needUpdate": s.rng.random() < 0.1, "grayTag": ""}


def _req_config_sync(s: _Session) -> Json:
    return {"configVersion": s.rng.randint(1000, 1200), "keys": ["home", "pay", "security"]}


def _resp_config_sync(s: _Session) -> Json:
    r = s.rng
    switches = (
        "enableNewCashier",
        "enableFaceFastPay",
        "homeVideoCard",
        "spdyOff",
        "redEnvelopeRain",
        "forestEntry",
        "darkMode",
        "miniAppPreload",
    )
    return {
        "configVersion": r.randint(1200, 1300),
        "switches": {
            k: r.choice(["1", "0", "true"]) for k in r.sample(switches, k=r.randint(3, 8))
        },
        "ttlSeconds": 3600,
    }


def _resp_unread(s: _Session) -> Json:
    r = s.rng
    return {
        "total": r.randint(0, 40),
        "byBox": {"trade": r.randint(0, 5), "service": r.randint(0, 20), "friend": r.randint(0, 9)},
    }


def _resp_msg_list(s: _Session) -> Json:
    r = s.rng
    return {
        "messages": [
            {
                "msgId": _hex(r, 24),
                "box": r.choice(["trade", "service", "friend"]),
                "title": r.choice(["交易提醒", "服务提醒", "Payment received", "账单已出"]),
                "preview": f"{r.choice(_MERCHANTS)} {_amount(r, 1, 300)}元",
                "time": s.clock_ms - r.randint(0, 7 * 86_400_000),
                "read": r.random() < 0.5,
            }
            for _ in range(r.randint(2, 10))
        ]
    }


def _req_mark_read(s: _Session) -> Json:
    return {"msgIds": [_hex(s.rng, 24) for _ in range(s.rng.randint(1, 5))]}


def _req_feed(s: _Session) -> Json:
    return {
        "userId": s.user_id,
        "cityCode": s.city_code,
        "cursor": "",
        "scene": "HOME",
        "count": 10,
    }


def _resp_feed(s: _Session) -> Json:
    r = s.rng
    kinds = (
        ("COUPON", "天天领红包"),
        ("VIDEO", "理财小知识"),
        ("STORE", "附近好店"),
        ("ARTICLE", "Spring Festival deals"),
        ("SERVICE", "城市服务"),
    )
    return {
        "cards": [
            {
                "cardId": _hex(r, 16),
                "type": kind,
                "title": title,
                "subtitle": r.choice(_COUPON_TITLES + _MERCHANTS),
                "image": f"https://mdn.alipayobjects.com/feed/{_hex(r, 20)}.jpg",
                "link": f"alipays://platformapi/startapp?appId={r.choice(_MINI_APPS)[0]}",
                "trackId": _hex(r, 16),
            }
            for kind, title in (r.choice(kinds) for _ in range(r.randint(3, 10)))
        ],
        "nextCursor": _hex(r, 12),
    }


def _resp_grid(s: _Session) -> Json:
    r = s.rng
    return {
        "grid": [
            {"appId": app_id, "name": name, "badge": r.choice(["", "", "NEW"])}
            for app_id, name in _MINI_APPS
        ],
        "version": r.randint(10, 99),
    }


def _req_search_hint(s: _Session) -> Json:
    return {"scene": "HOME", "cityCode": s.city_code}


def _resp_search_hint(s: _Session) -> Json:
    return {
        "hints": s.rng.sample(["交通卡", "医保", "红包", "余额宝", "hotel", "外卖", "话费"], k=3)
    }


def _req_buscard(s: _Session) -> Json:
    return {"cardType": "T0" + s.city_code, "cityCode": s.city_code, "userId": s.user_id}


def _resp_buscard(s: _Session) -> Json:
    r = s.rng
    return {
        "qrCode": _hex(r, 96),
        "cardNo": "T0" + s.city_code + _digits(r, 10),
        "expireAt": s.clock_ms + 60000,
        "balanceNeeded": False,
    }


def _resp_trips(s: _Session) -> Json:
    r = s.rng
    return {
        "trips": [
            {
                "line": f"{r.randint(1, 19)}号线",
                "in": r.choice(["龙翔桥", "人民广场", "西湖文化广场"]),
                "out": r.choice(["钱江路", "陆家嘴", "火车东站"]),
                "fare": _amount(r, 2, 9),
                "time": s.clock_ms - r.randint(0, 10**9),
            }
            for _ in range(r.randint(1, 6))
        ]
    }


def _resp_healthcode(s: _Session) -> Json:
    return {
        "color": "GREEN",
        "name": "*" + s.nickname[-1:],
        "cityCode": s.city_code,
        "updatedAt": s.clock_ms,
        "qr": _hex(s.rng, 64),
    }


def _req_redenvelope_open(s: _Session) -> Json:
    return {"envelopeId": "RE" + _digits(s.rng, 20), "groupId": _hex(s.rng, 16)}


def _resp_redenvelope_open(s: _Session) -> Json:
    r = s.rng
    return {
        "amount": _amount(r, 0.01, 88.88),
        "sender": r.choice(_NICKNAMES),
        "blessing": r.choice(["恭喜发财，大吉大利", "新年快乐", "Happy New Year!", "龙年行大运"]),
        "luckiest": r.random() < 0.2,
    }


def _req_redenvelope_send(s: _Session) -> Json:
    r = s.rng
    return {
        "totalAmount": _amount(r, 1, 888),
        "count": r.randint(1, 20),
        "type": "LUCKY",
        "blessing": "恭喜发财，大吉大利",
        "groupId": _hex(r, 16),
    }


def _resp_redenvelope_send(s: _Session) -> Json:
    return {"envelopeId": "RE" + _digits(s.rng, 20), "status": "SENT"}


def _resp_fund(s: _Session) -> Json:
    r = s.rng
    return {
        "totalAsset": _amount(r, 100, 500000),
        "holdings": [
            {
                "fundCode": _digits(r, 6),
                "name": r.choice(["易方达蓝筹精选", "招商中证白酒", "Nasdaq 100 ETF联接"]),
                "amount": _amount(r, 10, 50000),
                "yesterdayProfit": _amount(r, 0.01, 200),
            }
            for _ in range(r.randint(1, 6))
        ],
    }


def _req_log_upload(s: _Session) -> Json:
    r = s.rng
    pages = ("HomePage", "CashierPage", "BillListPage", "TransferPage", "CouponPage")
    return {
        "events": [
            {
                "e": r.choice(["click", "expose", "pageview"]),
                "page": r.choice(pages),
                "spm": f"{_spm(r)}.d{r.randint(1, 9)}",
                "t": s.clock_ms - r.randint(0, 60000),
            }
            for _ in range(r.randint(1, 12))
        ]
    }


def _req_utility(s: _Session) -> Json:
    r = s.rng
    return {
        "billType": r.choice(["ELECTRIC", "WATER", "GAS"]),
        "accountNo": _digits(r, 10),
        "amount": _amount(r, 20, 600),
        "companyCode": "C" + _digits(r, 6),
    }


def _resp_utility(s: _Session) -> Json:
    return {"orderId": s.trade_no(), "status": "SUCCESS", "points": s.rng.randint(0, 10)}


# Ordered by popularity (Zipf rank 1 first): launch calls and the payment loop
# dominate; account settings and sending red envelopes are rare.
_OPERATIONS: tuple[_Operation, ...] = (
    _Operation("log.event.upload", "home", 0.0, _req_log_upload, _resp_ok),
    _Operation("payment.paycode.refresh", "pay", 0.9, _req_paycode, _resp_paycode, "no-store"),
    _Operation("account.balance.get", "wealth", 0.9, _req_balance, _resp_balance, "no-store"),
    _Operation("home.feed.get", "home", 0.1, _req_feed, _resp_feed, "max-age=60"),
    _Operation("msgcenter.unread.count", "msgbox", 0.2, _req_user, _resp_unread),
    _Operation("bill.list.query", "bill", 0.7, _req_bill_list, _resp_bill_list),
    _Operation("payment.cashier.render", "pay", 1.0, _req_cashier, _resp_cashier),
    _Operation(
        "payment.order.create", "pay", 1.0, _req_order_create, _resp_order_create, "no-store"
    ),
    _Operation("payment.order.query", "pay", 0.8, _req_order_query, _resp_order_query),
    _Operation("coupon.usable.match", "pay", 0.8, _req_coupon_match, _resp_coupon_match),
    _Operation("merchant.nearby.search", "o2o", 0.2, _req_nearby, _resp_nearby, "max-age=300"),
    _Operation("transfer.recent.list", "transfer", 0.7, _req_user, _resp_recent_payees),
    _Operation("transfer.payee.lookup", "transfer", 1.0, _req_payee_lookup, _resp_payee_lookup),
    _Operation("transfer.submit", "transfer", 1.0, _req_transfer, _resp_transfer, "no-store"),
    _Operation("miniapp.launch.check", "miniapp", 0.3, _req_miniapp, _resp_miniapp_check),
    _Operation(
        "miniapp.config.get", "miniapp", 0.3, _req_miniapp, _resp_miniapp_config, "max-age=3600"
    ),
    _Operation("buscard.qrcode.get", "traffic", 1.0, _req_buscard, _resp_buscard, "no-store"),
    _Operation("healthcode.status.get", "cityservice", 0.8, _req_user, _resp_healthcode),
    _Operation("membership.points.get", "member", 0.5, _req_user, _resp_points),
    _Operation("coupon.list.query", "marketing", 0.6, _req_user, _resp_coupon_list),
    _Operation("search.hint.get", "home", 0.0, _req_search_hint, _resp_search_hint, "max-age=600"),
    _Operation("bill.detail.get", "bill", 0.7, _req_order_query, _resp_bill_detail),
    _Operation("msgcenter.list.query", "msgbox", 0.3, _req_user, _resp_msg_list),
    _Operation("msgcenter.read.mark", "msgbox", 0.3, _req_mark_read, _resp_ok),
    _Operation("account.profile.get", "account", 0.6, _req_user, _resp_profile, "max-age=300"),
    _Operation("redenvelope.open", "social", 1.0, _req_redenvelope_open, _resp_redenvelope_open),
    _Operation("merchant.store.detail", "o2o", 0.2, _req_nearby, _resp_store, "max-age=300"),
    _Operation("coupon.claim", "marketing", 0.8, _req_coupon_claim, _resp_coupon_claim),
    _Operation("membership.tasks.list", "member", 0.3, _req_user, _resp_tasks),
    _Operation("bill.monthly.summary", "bill", 0.6, _req_user, _resp_month_summary),
    _Operation("buscard.trips.list", "traffic", 0.5, _req_buscard, _resp_trips),
    _Operation("wealth.fund.holdings", "wealth", 0.9, _req_user, _resp_fund),
    _Operation("home.grid.get", "home", 0.0, _req_grid, _resp_grid, "max-age=3600"),
    _Operation("utility.bill.pay", "cityservice", 1.0, _req_utility, _resp_utility, "no-store"),
    _Operation("redenvelope.send", "social", 1.0, _req_redenvelope_send, _resp_redenvelope_send),
    _Operation("account.security.status", "account", 0.9, _req_user, _resp_security),
    _Operation("app.config.sync", "home", 0.0, _req_config_sync, _resp_config_sync, "max-age=3600"),
    _Operation("payment.methods.list", "pay", 0.9, _req_user, _resp_pay_methods),
)
_OPS_BY_NAME = {op.name: op for op in _OPERATIONS}
_OP_WEIGHTS = [1.0 / (rank**_ZIPF_EXPONENT) for rank in range(1, len(_OPERATIONS) + 1)]
# What an app fires on launch before the user touches anything.
_LAUNCH_OPS = ("app.config.sync", "home.feed.get", "msgcenter.unread.count")
OPERATION_NAMES: tuple[str, ...] = tuple(op.name for op in _OPERATIONS)


# --- server pushes ----------------------------------------------------------


def _push_payment_received(s: _Session) -> Json:
    r = s.rng
    amount = _amount(r, 0.5, 2000)
    return {
        "title": s.zh("收钱码收款", "Payment received"),
        "content": s.zh(f"支付宝成功收款{amount}元", f"You received CNY {amount}"),
        "amount": amount,
        "currency": "CNY",
        "payer": "*" + r.choice("明芳伟娜杰晨"),
        "tradeNo": s.trade_no(),
        "time": s.clock_ms,
        "voice": r.random() < 0.8,
    }


def _push_bill_reminder(s: _Session) -> Json:
    r = s.rng
    return {
        "title": s.zh("花呗还款提醒", "Huabei repayment reminder"),
        "content": s.zh(
            f"本月应还{_amount(r, 50, 8000)}元，还款日3月10日", "Your bill is due on Mar 10"
        ),
        "dueDate": "2024-03-10",
        "link": "alipays://platformapi/startapp?appId=20000199",
    }


def _push_marketing(s: _Session) -> Json:
    r = s.rng
    return {
        "title": r.choice(["新春红包雨", "Spring Festival special", "五福活动开始啦"]),
        "content": f"{r.choice(_COUPON_TITLES)}，{r.choice(_MERCHANTS)}可用",
        "image": f"https://mdn.alipayobjects.com/mkt/{_hex(r, 20)}.png",
        "campaignId": "CP" + _digits(r, 12),
        "expireAt": s.clock_ms + 86_400_000,
        "link": f"alipays://platformapi/startapp?appId={r.choice(_MINI_APPS)[0]}&page=coupon",
        "buttons": [
            {"text": s.zh("立即领取", "Claim now"), "action": "OPEN_LINK"},
            {"text": s.zh("不感兴趣", "Not interested"), "action": "DISMISS"},
        ],
        "style": {
            "layout": r.choice(["BIG_IMAGE", "TEXT", "CARD"]),
            "sound": "default",
            "badge": r.randint(0, 9),
        },
    }


def _push_msgcenter(s: _Session) -> Json:
    r = s.rng
    return {
        "box": r.choice(["friend", "service"]),
        "from": r.choice(_NICKNAMES),
        "msgId": _hex(r, 24),
        "preview": r.choice(
            [
                "[红包]恭喜发财",
                "晚上一起吃饭吗？",
                "收到，谢谢！",
                "[Transfer] 200.00",
                "新年快乐🧧",
            ]
        ),
        "unread": r.randint(1, 30),
    }


def _push_config(s: _Session) -> Json:
    r = s.rng
    return {
        "configVersion": r.randint(1200, 1300),
        "changed": r.sample(
            ["enableNewCashier", "homeVideoCard", "redEnvelopeRain", "darkMode"], k=r.randint(1, 3)
        ),
        "pullAfterMs": r.randint(0, 30000),
    }


def _push_redenvelope(s: _Session) -> Json:
    r = s.rng
    return {
        "title": s.zh("你收到一个红包", "You got a red envelope"),
        "sender": r.choice(_NICKNAMES),
        "envelopeId": "RE" + _digits(r, 20),
        "blessing": r.choice(["恭喜发财，大吉大利", "新年快乐", "龙年行大运"]),
        "groupId": _hex(r, 16),
    }


@dataclass(frozen=True)
class _PushKind:
    topic: str
    weight: int
    body: Builder
    collapse_key: str | None
    priority: str


_PUSH_KINDS = (
    _PushKind("payment.received", 30, _push_payment_received, None, "high"),
    _PushKind("msgcenter.notice", 25, _push_msgcenter, "msgbox-unread", "high"),
    _PushKind("marketing.coupon", 18, _push_marketing, "mkt-campaign", "normal"),
    _PushKind("redenvelope.received", 12, _push_redenvelope, None, "high"),
    _PushKind("bill.reminder", 8, _push_bill_reminder, "bill-reminder", "normal"),
    _PushKind("config.update", 7, _push_config, "config", "normal"),
)


# --- headers and envelopes ----------------------------------------------------

# Business failures travel inside a successful RESPONSE (status 0); gateway
# failures set the MMTP status and carry a short body.
_BIZ_ERRORS = (
    ("SYSTEM_BUSY", "系统繁忙，请稍后再试"),
    ("INVALID_PARAMETER", "参数错误"),
    ("BALANCE_NOT_ENOUGH", "余额不足"),
    ("RISK_REJECT", "Risk control rejected"),
)
_GATEWAY_ERRORS = (
    (ErrorCode.TIMEOUT, "UPSTREAM_TIMEOUT"),
    (ErrorCode.RATE_LIMITED, "RATE_LIMITED"),
    (ErrorCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
)


def _request_headers(s: _Session, op: _Operation, trace_id: str) -> list[list[str]]:
    r = s.rng
    headers = [
        ["trace-id", trace_id],
        ["ts", str(s.clock_ms)],
        ["locale", s.locale],
        ["biz-scene", op.biz_scene],
        [
            "content-type",
            "application/json" if r.random() < 0.96 else "application/json; charset=utf-8",
        ],
    ]
    if r.random() < op.sign_probability:
        headers.append(["sign", _hex(r, 64)])
    if r.random() < 0.04:
        headers.append(["retry", str(r.randint(1, 2))])
    if r.random() < 0.15:
        headers.append(["page", r.choice(["HomePage", "CashierPage", "BillListPage", "MinePage"])])
    return headers


def _request_body(s: _Session, op: _Operation) -> Json:
    r = s.rng
    body = op.request(s)
    if isinstance(body, dict) and r.random() < 0.55:
        # Apps attach entry-channel and tracking info so backends can attribute traffic.
        body["extParams"] = {
            "chInfo": r.choice(["ch_home", "ch_scan", "ch_search", "ch_push", "ch_miniapp"]),
            "spm": _spm(r),
            "sourceAppId": r.choice(["20000001", "20000056", "60000002", "20000067"]),
        }
    return body


def _response(s: _Session, op: _Operation, trace_id: str) -> Message:
    r = s.rng
    headers = [
        ["trace-id", trace_id],
        ["server-time", str(s.clock_ms)],
        ["content-type", "application/json"],
    ]
    if op.cache_control is not None and r.random() < 0.7:
        headers.append(["cache-control", op.cache_control])
    roll = r.random()
    status = int(ErrorCode.NO_ERROR)
    body: Json
    if roll < 0.01:
        code, name = r.choice(_GATEWAY_ERRORS)
        status = int(code)
        body = {"code": name, "msg": "gateway"}
        if code == ErrorCode.RATE_LIMITED:
            headers.append(["retry-after", str(r.randint(1, 30))])
    elif roll < 0.04:
        code_name, message = r.choice(_BIZ_ERRORS)
        body = {"code": code_name, "msg": message, "traceId": trace_id}
    else:
        body = {"code": "SUCCESS", "data": op.response(s)}
    return {"kind": "response", "op": op.name, "status": status, "headers": headers, "body": body}


def _push(s: _Session) -> Message:
    r = s.rng
    kind = r.choices(_PUSH_KINDS, weights=[k.weight for k in _PUSH_KINDS])[0]
    headers = [["ts", str(s.clock_ms)], ["content-type", "application/json"]]
    if r.random() < 0.6:
        headers.append(["priority", kind.priority])
    if kind.collapse_key is not None and r.random() < 0.8:
        headers.append(["collapse-key", kind.collapse_key])
    if r.random() < 0.5:
        headers.append(["ttl-s", str(r.choice([60, 3600, 86400]))])
    # Message ids start with the epoch second, like ObjectIds: sortable by time.
    message_id = f"{s.clock_ms // 1000:08x}{_hex(r, 16)}"
    body = kind.body(s)
    if r.random() < 0.7:
        # Push platforms attach template and tracking ids for delivery analytics.
        body["templateCode"] = f"{kind.topic.upper().replace('.', '_')}_V{r.randint(1, 4)}"
        body["bizId"] = _hex(r, 16)
    return {
        "kind": "push",
        "message_id": message_id,
        "topic": kind.topic,
        "headers": headers,
        "body": body,
    }


# --- sessions -----------------------------------------------------------------


def _new_session(rng: random.Random) -> _Session:
    city_code, city_name = rng.choice(_CITIES)
    return _Session(
        rng=rng,
        user_id="2088" + _digits(rng, 12),
        nickname=rng.choice(_NICKNAMES),
        locale=_weighted(rng, _LOCALES),
        city_code=city_code,
        city_name=city_name,
        clock_ms=_EPOCH_BASE_MS + rng.randint(0, _SPREAD_MS),
    )


def _pushes_before_pair(rng: random.Random, pushes_per_pair: float) -> int:
    whole = int(pushes_per_pair)
    return whole + (1 if rng.random() < pushes_per_pair - whole else 0)


def _session_messages(s: _Session, push_fraction: float) -> Iterator[Message]:
    r = s.rng
    # n pairs and p pushes give p / (2n + p) pushes overall.
    pushes_per_pair = 2 * push_fraction / (1 - push_fraction)
    n_pairs = max(1, min(25, int(r.lognormvariate(1.9, 0.6))))
    launch = [_OPS_BY_NAME[name] for name in _LAUNCH_OPS if r.random() < 0.8]
    chosen = r.choices(_OPERATIONS, weights=_OP_WEIGHTS, k=max(0, n_pairs - len(launch)))
    for op in (launch + chosen)[:n_pairs]:
        for _ in range(_pushes_before_pair(r, pushes_per_pair)):
            s.tick(200, 30_000)
            yield _push(s)
        s.tick(100, 15_000)
        trace_id = _hex(r, 32)
        yield {
            "kind": "request",
            "op": op.name,
            "headers": _request_headers(s, op, trace_id),
            "body": _request_body(s, op),
        }
        s.tick(15, 400)
        yield _response(s, op, trace_id)


def generate_corpus(
    n_sessions: int, seed: int = 0, push_fraction: float = DEFAULT_PUSH_FRACTION
) -> Iterator[Message]:
    """Yield the messages of ``n_sessions`` sessions, deterministically for ``seed``.

    ``push_fraction`` is the expected share of pushes among all messages; the
    rest are request/response pairs. A session averages ~16 messages
    (2 to ~60).
    """
    if not 0.0 <= push_fraction < 1.0:
        raise ValueError(f"push_fraction must be in [0, 1), got {push_fraction}")
    rng = random.Random(seed)
    for session_index in range(n_sessions):
        session = _new_session(rng)
        for message in _session_messages(session, push_fraction):
            yield {"session": session_index, **message}


def message_body_bytes(message: Message) -> bytes:
    """The body as the app would send it: compact UTF-8 JSON."""
    return json.dumps(message["body"], separators=(",", ":"), ensure_ascii=False).encode()


def write_corpus(
    path: str | Path,
    n_sessions: int,
    seed: int = 0,
    push_fraction: float = DEFAULT_PUSH_FRACTION,
    progress: Callable[[int, int], None] | None = None,
    app: str = "wallet",
) -> int:
    """Write the corpus of ``app`` (``channel/corpus_apps``) as JSONL to ``path``;
    returns the number of messages.

    ``progress(sessions_done, messages_written)`` is called every 1,000 sessions.
    """
    from channel.corpus_apps import generate_app_corpus

    n_messages = 0
    last_session = -1
    with open(path, "w", encoding="utf-8") as out:
        for message in generate_app_corpus(app, n_sessions, seed, push_fraction):
            out.write(json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n")
            n_messages += 1
            if progress is not None and message["session"] != last_session:
                last_session = message["session"]
                if last_session and last_session % 1000 == 0:
                    progress(last_session, n_messages)
    if progress is not None:
        progress(n_sessions, n_messages)
    return n_messages
