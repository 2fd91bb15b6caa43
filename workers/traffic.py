"""Seeded, realistic B2B traffic for ``leadcycle demo``, benchmarks and fault drills.

Each lead lives one journey through The Model (marketing -> inside sales -> field sales): a CRM
import, or anonymous visits that end in a form and an ``identify``; browsing whose intent follows
an engagement level (cold, warming, hot); inside-sales outcomes after hot activity; and for some
lost or parked leads a return to the pricing page weeks later, the recycle story the worker
exists for. Around them: crawlers and mail-gateway link scanners (valid events the worker must
drop) and, on request, re-sent duplicates and broken messages.

Why it is built this way:

- Lazy, in event-time order: leads arrive in time order and each journey is a generator; a heap
  holds one pending step per active journey, so memory follows the number of leads active at
  once, not the length of the stream (benchmarks ask for 500k messages).
- Deterministic: one ``random.Random(seed)`` drives everything, ids come from a counter and no
  clock is read, so a spec always yields the same bytes.
- Fast: payloads are plain dicts written by one shared ``json.JSONEncoder``; the tests validate
  them with the pydantic models, the hot path does not.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import random
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

SITE = "https://www.leadcycle.example"
JST = timezone(timedelta(hours=9))
#: Leads arrive during this share of the window, so most journeys have room to unfold.
ARRIVAL_SHARE = 0.75
#: Chance that a lead arrival comes with a crawler visit somewhere on the site.
CRAWLER_SHARE = 0.04

Payload = dict[str, object]
#: One journey step: when, topic suffix, payload (its ``event_id`` is filled in when emitted).
Step = tuple[datetime, str, Payload]
Pages = tuple[tuple[str, str], ...]  # (path, title)
#: A part of a journey: yields steps, returns the time it ended.
Part = Generator[Step, None, datetime]


@dataclass(frozen=True)
class TrafficSpec:
    """What to generate. The same spec always yields the same bytes."""

    leads: int = 300
    seed: int = 7
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)  # tz-aware; the window starts here
    days: int = 60  # window length; nothing happens after it
    anonymous_share: float = 0.35  # leads whose first visits are anonymous, then identify
    duplicate_rate: float = 0.0  # messages re-sent identically (same event_id) later on
    invalid_rate: float = 0.0  # extra broken messages, per valid message

    def __post_init__(self) -> None:
        if self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if self.leads < 0 or self.days < 1:
            raise ValueError("leads must be >= 0 and days >= 1")
        for name in ("anonymous_share", "duplicate_rate", "invalid_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


@dataclass(frozen=True, slots=True)
class Message:
    """One message as a producer would send it."""

    topic: str  # suffix: "events" | "profiles" | "outcomes"
    key: bytes  # lead_id when the producer knows it, else the anonymous_id
    value: bytes  # JSON (anything at all when not valid)
    valid: bool  # whether the worker should accept it
    timestamp: datetime  # the event time; duplicates keep their original's


class _Weights:
    """A weighted choice whose cumulative table is built once (``random.choices`` rebuilds it)."""

    def __init__(self, weights: dict[str, int]) -> None:
        self.names = tuple(weights)
        self.bounds = tuple(itertools.accumulate(weights.values()))

    def pick(self, rng: random.Random) -> str:
        return self.names[bisect.bisect(self.bounds, rng.random() * self.bounds[-1])]


# fmt: off
# The data tables read better packed than one item per line.
#: Kinds of broken message ``invalid_rate`` mixes in; each is a fault the worker must dead-letter.
BROKEN_KINDS = ("bad_json", "missing_field", "naive_time", "wrong_type", "unknown_type",
                "oversized", "nul_char", "not_utf8")
#: country -> (share of leads, UTC offset in hours, browser locale)
_COUNTRIES = {"JP": (45, 9, "ja-JP"), "US": (22, -5, "en-US"), "GB": (8, 0, "en-GB"),
              "DE": (7, 1, "de-DE"), "IN": (6, 5, "en-IN"), "SG": (5, 8, "en-SG"),
              "FR": (4, 1, "fr-FR"), "AU": (3, 10, "en-AU")}
_COUNTRY_SHARES = _Weights({code: share for code, (share, _, _) in _COUNTRIES.items()})
_INDUSTRIES = ("software", "manufacturing", "finance", "retail", "healthcare", "education",
               "public sector", "logistics", "media", "consulting")
_TITLES_EN = ("VP of Sales", "Director, IT", "Marketing Manager", "Head of Marketing", "CIO",
              "Sales Operations Manager", "Engineer", "Software Engineer", "Analyst",
              "Consultant", "Procurement Specialist", "Intern", "CEO")
_TITLES_JA = ("部長", "営業部長", "課長", "情報システム部 課長", "取締役", "代表取締役", "担当",
              "マーケティング担当", "主任", "エンジニア", "インターン")
#: Title changes a later CRM update may bring.
_PROMOTIONS = {"担当": "主任", "主任": "課長", "課長": "部長", "Engineer": "Senior Engineer",
               "Analyst": "Senior Analyst", "Marketing Manager": "Head of Marketing"}
#: Keyed by "is the lead in Japan".
_SURNAMES = {True: ("sato", "suzuki", "takahashi", "tanaka", "watanabe", "ito", "yamamoto"),
             False: ("smith", "jones", "miller", "garcia", "brown", "schmidt", "martin")}
_COMPANIES = {
    True: (("Sakura", "Fuji", "Aoba", "Hikari", "Midori", "Nishikawa", "Daiichi", "Kita"),
           ("Seiki", "Shoji", "Kogyo", "Systems", "Holdings", "Denki", "Butsuryu", "Foods")),
    False: (("Northwind", "Blue Harbor", "Brightline", "Ironbridge", "Cobalt", "Meridian"),
            ("Systems", "Analytics", "Manufacturing", "Bank", "Retail", "Health", "Labs")),
}
#: What a company name's last word says about its industry (the rest are drawn at random).
_SECTORS = {"Systems": "software", "Labs": "software", "Analytics": "software", "Bank": "finance",
            "Retail": "retail", "Foods": "retail", "Health": "healthcare", "Seiki": "manufacturing",
            "Kogyo": "manufacturing", "Manufacturing": "manufacturing", "Butsuryu": "logistics"}
#: Outsiders sales must disqualify: kind -> (organisation, email domain, industry).
_OUTSIDERS = {"competitor": ("RivalSoft", "rivalsoft.example", "software"),
              "partner": ("PartnerCo", "partnerco.example", "consulting"),
              "student-jp": ("Example University", "example-u.ac.jp", "education"),
              "student": ("Example State University", "mail.example-state.edu", "education")}
_SOURCES = _Weights({"demo_request": 4, "webinar": 14, "content": 22, "exhibition": 16,
                     "referral": 6, "ads": 14, "organic": 20, "partner": 4})
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_BROWSERS = (
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/124.0.0.0 Safari/537.36",
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/124.0.0.0 Safari/537.36 "
    "Edg/124.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
)
_CRAWLERS = ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
             "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
             "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)")
#: Mail gateways open every link in a message seconds after delivery, with a headless browser.
_SCANNER: Payload = {"user_agent": f"Mozilla/5.0 (X11; Linux x86_64) {_WEBKIT} "
                                   "HeadlessChrome/124.0.0.0 Safari/537.36",
                     "ip": "198.51.100.25"}
_NETS = ("192.0.2", "198.51.100", "203.0.113")  # documentation ranges only
_REFERRERS = (None, None, "https://www.google.com/", "https://www.bing.com/",
              "https://www.linkedin.com/", "https://news.example.jp/")
_BROWSE = (("/", "Home"), ("/blog/lead-scoring-basics", "Lead scoring basics"),
           ("/blog/the-model-explained", "The Model, explained"), ("/careers", "Careers"),
           ("/blog/recycling-lost-deals", "Recycling lost deals"), ("/product", "Product"))
_RESEARCH = (("/product", "Product"), ("/product/integrations", "Integrations"),
             ("/docs/getting-started", "Getting started"), ("/docs/api", "API reference"),
             ("/customers", "Customer stories"), ("/blog/cdp-vs-crm", "CDP vs CRM"))
_BUYING = (("/pricing", "Pricing"), ("/pricing", "Pricing"), ("/product", "Product"),
           ("/security", "Security"), ("/contact", "Contact sales"))
_CAREERS = (("/careers", "Careers"), ("/careers/new-graduates", "新卒採用"),
            ("/blog/the-model-explained", "The Model, explained"), ("/", "Home"))
_CONTENT = (("wp-2026-cdp", "CDP buyer's guide 2026"), ("wp-2026-abm", "ABM playbook"),
            ("ebook-lead-recycling", "Lead recycling handbook"),
            ("case-sakura-seiki", "導入事例: Sakura Seiki"))
_WEBINARS = (("webinar-2026-scoring", "Lead scoring in 30 minutes"),
             ("webinar-2026-the-model", "The Model セミナー"))
_CAMPAIGNS = ("nl-2026-01", "nl-2026-02", "nurture-mql-3", "expo-followup", "webinar-invite")
_OFF_SITE = ("email_click", "webinar_attended", "unsubscribe")
_ENGAGEMENT = _Weights({"cold": 55, "warming": 30, "hot": 15})
#: How a hot lead raises its hand (a competitor wants a trial, not a sales call).
_HANDS = {"prospect": _Weights({"demo_request": 45, "quote_request": 30, "trial_signup": 25}),
          "competitor": _Weights({"trial_signup": 70, "quote_request": 30})}
#: engagement -> sessions (min, max), mean days between sessions, pages, how a session may end
_PLANS = {
    "cold": (1, 3, 8.0, _BROWSE, _Weights({"": 75, "email_click": 20, "content_download": 5})),
    "warming": (2, 5, 5.0, _BROWSE + _RESEARCH,
                _Weights({"": 30, "content_download": 30, "webinar_attended": 15,
                          "email_click": 25})),
    "hot": (3, 6, 3.0, _RESEARCH, _Weights({"": 30, "content_download": 25,
                                            "webinar_attended": 15, "email_click": 20,
                                            "trial_signup": 10})),
}
_LOCAL_HOURS = (8, 9, 9, 10, 10, 10, 11, 11, 13, 13, 14, 14, 14, 15, 15, 16, 16, 17, 18, 21)
# fmt: on


@dataclass(slots=True)
class _Lead:
    """One person's identity and habits; ``known`` flips when the tracker learns who they are."""

    lead_id: str
    anonymous_id: str
    kind: str  # prospect | student | competitor | partner
    engagement: str  # cold | warming | hot
    offset: timedelta  # local wall clock minus UTC: sessions happen in local working hours
    tz: timezone  # how this lead's systems write times (JP: +09:00, elsewhere Z)
    context: Payload
    profile: Payload
    known: bool
    subscribed: bool = True


@lru_cache(maxsize=1024)
def _firmographics(company: str) -> tuple[int, str]:
    """Size and industry of a company: a property of the account, the same for all its leads."""
    rng = random.Random(zlib.crc32(company.encode()))
    # Log-normal: median ~50 staff, about one company in twenty with 1,000 or more.
    size = max(1, int(rng.lognormvariate(3.9, 1.8)))
    return size, _SECTORS.get(company.rsplit(" ", 1)[-1]) or rng.choice(_INDUSTRIES)


def _new_lead(rng: random.Random, n: int, anonymous: bool) -> _Lead:
    """A lead with a CRM profile; a few per cent are students, competitors or partners."""
    r = rng.random()
    kind = "student" if r < 0.03 else "competitor" if r < 0.05 else "partner" if r < 0.07 else ""
    country = _COUNTRY_SHARES.pick(rng)
    _, hours, locale = _COUNTRIES[country]
    jp = country == "JP"
    person = f"{rng.choice('aehkmnrsty')}.{rng.choice(_SURNAMES[jp])}{n}"  # unique per lead
    profile: Payload = {}
    if kind:
        company, domain, industry = _OUTSIDERS[f"{kind}-jp" if jp and kind == "student" else kind]
        title = ("学生" if jp else "Student") if kind == "student" else rng.choice(_TITLES_EN)
    else:
        first, second = _COMPANIES[jp]
        company = f"{rng.choice(first)} {rng.choice(second)}"
        domain = company.lower().replace(" ", "-") + ".example"
        size, industry = _firmographics(company)
        title = rng.choice(_TITLES_JA if jp and rng.random() < 0.75 else _TITLES_EN)
        if rng.random() < 0.9:  # the CRM does not always know the head count
            profile["company_size"] = size
    profile.update(email=f"{person}@{domain}", company_name=company, industry=industry)
    profile.update(job_title=title, country=country)
    profile["source"] = "partner" if kind == "partner" else _SOURCES.pick(rng)
    if rng.random() < 0.25:
        profile["owner"] = f"rep-{rng.randint(1, 5)}"
    return _Lead(
        lead_id=f"L{n:06d}",
        anonymous_id=f"a-{rng.getrandbits(64):016x}",
        kind=kind or "prospect",
        engagement="warming" if kind == "partner" else _ENGAGEMENT.pick(rng),
        offset=timedelta(hours=hours),
        tz=JST if jp else UTC,
        context={
            "user_agent": rng.choice(_BROWSERS),
            "ip": f"{rng.choice(_NETS)}.{rng.randint(1, 254)}",
            "locale": locale,
        },
        profile=profile,
        known=not anonymous,
    )


def _stamp(t: datetime, tz: timezone) -> str:
    text = t.astimezone(tz).isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _event(lead: _Lead, kind: str, t: datetime, props: Payload, **extra: object) -> Step:
    """A behaviour event. Mail and webinar systems know the lead but not the browser cookie."""
    doc: Payload = {"event_id": "", "type": kind, "occurred_at": _stamp(t, lead.tz)}
    web = kind not in _OFF_SITE
    if web:
        doc["anonymous_id"] = lead.anonymous_id
    if lead.known:
        doc["lead_id"] = lead.lead_id
    doc["properties"] = props
    if web:
        doc["context"] = lead.context
    doc.update(extra)  # email on identify; the scanner's context on its clicks
    return t, "events", doc


def _crm(kind: str, lead: _Lead, t: datetime, fields: Payload) -> Payload:
    """A profile update or outcome: systems of record that always know the lead."""
    doc: Payload = {"event_id": "", "type": kind, "lead_id": lead.lead_id}
    doc["occurred_at"] = _stamp(t, lead.tz)
    doc.update(fields)
    return doc


def _profile(lead: _Lead, t: datetime, changes: Payload) -> Step:
    lead.profile.update(changes)
    return t, "profiles", _crm("profile_updated", lead, t, changes)


def _outcome(lead: _Lead, t: datetime, outcome: str, rep: str, **extra: object) -> Step:
    return t, "outcomes", _crm("sales_outcome", lead, t, {"outcome": outcome, "rep": rep, **extra})


def _later(rng: random.Random, lead: _Lead, t: datetime, mean_days: float) -> datetime:
    """The start of a later session: some days on, mostly on a weekday in local working hours."""
    day = (t + lead.offset).replace(hour=0, minute=0, second=0, microsecond=0)
    day += timedelta(days=int(rng.expovariate(1.0 / mean_days)))
    if day.weekday() >= 5 and rng.random() < 0.85:
        day += timedelta(days=7 - day.weekday())
    when = day + timedelta(hours=rng.choice(_LOCAL_HOURS), seconds=rng.randrange(3600))
    when -= lead.offset
    return when if when > t else t + timedelta(minutes=rng.randint(20, 180))


def _browse(
    rng: random.Random, lead: _Lead, t: datetime, pages: Pages, ref: str | None = ""
) -> Part:
    """A visit of a few pages; the first page's referrer is a search engine, a site, or none."""
    ref = rng.choice(_REFERRERS) if ref == "" else ref
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        path, title = rng.choice(pages)
        props: Payload = {"url": SITE + path, "title": title}
        if ref is not None:
            props["referrer"] = ref
        yield _event(lead, "page_view", t, props)
        ref = SITE + path
        t += timedelta(seconds=rng.randint(10, 240))
    return t


def _act(rng: random.Random, lead: _Lead, t: datetime, action: str) -> Part:
    """One conversion-style action, with the events a real stack emits around it."""
    if action in ("content_download", "trial_signup"):
        cid, title = rng.choice(_CONTENT) if action == "content_download" else ("trial", "Trial")
        form = "download-gate" if action == "content_download" else "trial"
        yield _event(lead, "form_submit", t, {"form_id": form, "url": f"{SITE}/forms/{form}"})
        t += timedelta(seconds=rng.randint(2, 20))
        yield _event(lead, action, t, {"content_id": cid, "title": title})
    elif action == "webinar_attended":
        cid, title = rng.choice(_WEBINARS)
        yield _event(lead, action, t, {"content_id": cid, "title": title})
    elif action == "email_click" and lead.subscribed:
        campaign, (path, _) = rng.choice(_CAMPAIGNS), rng.choice(_BUYING + _RESEARCH)
        props: Payload = {"campaign": campaign, "url": f"{SITE}{path}?utm_campaign={campaign}"}
        if rng.random() < 0.25:  # the gateway's scanner clicks first
            yield _event(lead, action, t, props, context=_SCANNER)
            t += timedelta(minutes=rng.randint(5, 600))
        yield _event(lead, action, t, props)
        if rng.random() < 0.04:
            lead.subscribed, t = False, t + timedelta(seconds=40)
            yield _event(lead, "unsubscribe", t, {"campaign": campaign})
        else:
            t = yield from _browse(rng, lead, t + timedelta(seconds=3), _BUYING, None)
    elif action in ("demo_request", "quote_request"):
        form = action.split("_")[0]
        yield _event(lead, action, t, {"form_id": form, "url": f"{SITE}/contact/{form}"})
    return t + timedelta(seconds=rng.randint(30, 300))


def _revisit(rng: random.Random, lead: _Lead, t: datetime) -> str:
    return ((t + lead.offset).date() + timedelta(days=rng.randint(30, 180))).isoformat()


def _sales(rng: random.Random, lead: _Lead, t: datetime) -> Generator[Step, None, datetime | None]:
    """Inside sales works a lead that raised its hand; returns when it was parked, if it was."""
    rep = str(lead.profile.get("owner") or f"rep-{rng.randint(1, 5)}")
    t = _later(rng, lead, t, 0.7)
    if "owner" not in lead.profile:  # the CRM assigns an owner when the lead is routed
        yield _profile(lead, t, {"owner": rep})
    for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
        yield _outcome(lead, t, "no_answer", rep)
        t = _later(rng, lead, t, 1.5)
    if lead.kind != "prospect":
        yield _outcome(lead, t, "disqualified", rep, reason=lead.kind)
        return None
    if rng.random() < 0.08:
        yield _outcome(lead, t, "lost", rep, reason="uncontacted")
        return t
    yield _outcome(lead, t, "contacted", rep)
    r = rng.random()
    if r < 0.4:
        t = _later(rng, lead, t, 2.0)
        yield _outcome(lead, t, "appointment_set", rep)
        bant = {"authority": rng.random() < 0.6, "need": True, "timeline": rng.random() < 0.5}
        if rng.random() < 0.7:  # budget is the fact reps most often fail to learn
            bant["budget"] = rng.random() < 0.6
        t = _later(rng, lead, t, 5.0)
        yield _outcome(lead, t, "opportunity_opened", rep, bant=bant)
        t, r = _later(rng, lead, t, 15.0), rng.random()
        if r < 0.3:
            yield _outcome(lead, t, "won", rep)
            return None
        if r > 0.75:
            return None  # still open when the window ends
        reasons: tuple[str, ...] = ("timing", "no_budget", "competitor_chosen", "no_need")
    elif r < 0.62:
        t, reason = _later(rng, lead, t, 1.0), rng.choice(("timing", "timing", "no_need", None))
        extra = {"revisit_on": _revisit(rng, lead, t)} if reason == "timing" else {}
        yield _outcome(lead, t, "nurture", rep, reason=reason, **extra)
        return t
    elif r < 0.85:
        reasons = ("timing", "no_budget", "no_need")
    else:
        if r < 0.92:
            yield _outcome(lead, _later(rng, lead, t, 1.0), "disqualified", rep, reason="invalid")
        return None
    reason = rng.choice(reasons)
    extra = {"revisit_on": _revisit(rng, lead, t)} if reason == "timing" else {}
    yield _outcome(lead, t, "lost", rep, reason=reason, **extra)
    return t


def _change(rng: random.Random, lead: _Lead) -> Payload:
    """A later CRM edit: a promotion, a new head count, or a new owner."""
    title = str(lead.profile.get("job_title"))
    if title in _PROMOTIONS:
        return {"job_title": _PROMOTIONS[title]}
    if "company_size" in lead.profile and rng.random() < 0.6:
        return {"company_size": int(str(lead.profile["company_size"])) * 11 // 10 + 1}
    return {"owner": f"rep-{rng.randint(1, 5)}"}


def _journey(rng: random.Random, lead: _Lead, t: datetime) -> Iterator[Step]:
    """One lead from first touch to sales outcome (and, sometimes, back again)."""
    if lead.known:  # imported from the CRM: a trade-show list, a referral, a partner
        yield _profile(lead, t, dict(lead.profile))
    else:
        for _ in range(rng.randint(1, 2)):
            t = yield from _browse(rng, lead, t, _CAREERS if lead.kind == "student" else _BROWSE)
            t = _later(rng, lead, t, 4.0)
        lead.known = True  # a gated download tells the tracker who this is
        yield _event(lead, "identify", t, {"form_id": "download-gate"}, email=lead.profile["email"])
        yield _profile(lead, t + timedelta(seconds=2), dict(lead.profile))
        t = yield from _act(rng, lead, t + timedelta(seconds=4), "content_download")
    low, high, gap, pages, actions = _PLANS[lead.engagement]
    pages = {"student": _CAREERS, "competitor": _BUYING + _RESEARCH}.get(lead.kind, pages)
    sessions = rng.randint(low, high)
    for i in range(sessions):
        t = _later(rng, lead, t, gap)
        buying = lead.engagement == "hot" and i >= sessions // 2
        t = yield from _browse(rng, lead, t, _BUYING if buying else pages)
        t = yield from _act(rng, lead, t, actions.pick(rng))
        if rng.random() < 0.04:
            yield _profile(lead, t, _change(rng, lead))
    if lead.engagement == "hot":
        t = yield from _browse(rng, lead, _later(rng, lead, t, gap), _BUYING)
        hand = _HANDS.get(lead.kind, _HANDS["prospect"]).pick(rng)
        t = yield from _act(rng, lead, t, hand)
    called = {"hot": 0.85, "warming": 0.08, "cold": 0.0}[lead.engagement]
    if lead.kind != "prospect" and lead.engagement != "cold":
        called = 0.5  # sales spots some outsiders and disqualifies them
    parked = (yield from _sales(rng, lead, t)) if rng.random() < called else None
    if parked is not None and rng.random() < 0.4:
        t = _later(rng, lead, parked, 30.0)  # the lost lead is back on the pricing page
        for _ in range(rng.randint(1, 3)):
            t = yield from _browse(rng, lead, t, _BUYING)
            t = _later(rng, lead, t, 4.0)
        if rng.random() < 0.3:
            yield from _act(rng, lead, t, "demo_request")


def _crawl(rng: random.Random, t: datetime) -> Iterator[Step]:
    """A crawler's pass over the site: valid events the worker must recognise and drop."""
    ua: Payload = {"user_agent": rng.choice(_CRAWLERS), "ip": f"203.0.113.{rng.randint(1, 254)}"}
    bot = _Lead("", f"a-{rng.getrandbits(64):016x}", "bot", "", timedelta(0), UTC, ua, {}, False)
    for _ in range(rng.randint(3, 15)):
        path, title = rng.choice(_BROWSE + _RESEARCH + _BUYING)
        yield _event(bot, "page_view", t, {"url": SITE + path, "title": title})
        t += timedelta(seconds=rng.randint(1, 20))


_TEXT_FIELD = {"events": "properties", "profiles": "company_name", "outcomes": "rep"}
_WRONG_TYPES: dict[str, Payload] = {
    "events": {"properties": "pricing"},
    "profiles": {"company_size": "about 500"},
    "outcomes": {"bant": "yes"},
}


def _broken(rng: random.Random, topic: str, doc: Payload, t: datetime) -> bytes:
    """A broken variant of ``doc`` (see ``BROKEN_KINDS``)."""
    doc, kind = dict(doc), rng.choice(BROKEN_KINDS)
    field = _TEXT_FIELD[topic]

    def text(value: str) -> None:
        doc[field] = {"title": value} if topic == "events" else value

    if kind == "missing_field":
        del doc[rng.choice(("event_id", "occurred_at"))]
    elif kind == "naive_time":
        doc["occurred_at"] = t.replace(tzinfo=None).isoformat(timespec="seconds")
    elif kind == "wrong_type":
        doc.update(_WRONG_TYPES[topic])
    elif kind == "unknown_type":
        doc["type"] = {"events": "page_visit", "profiles": "profile_changed"}.get(topic, "call")
    elif kind == "oversized":
        text("x" * 20_000)  # over the 4,096-character string limit, under the message limit
    elif kind == "nul_char":
        text("Pricing\x00")
    elif kind == "not_utf8":  # a producer that writes Shift_JIS
        text("資料請求")
        return json.dumps(doc, ensure_ascii=False).encode("cp932")
    value = json.dumps(doc, ensure_ascii=False).encode()
    return value[: len(value) // 2] if kind == "bad_json" else value


#: Compact UTF-8 JSON, as trackers send it; made once because ``json.dumps`` rebuilds it per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def recent_spec(*, leads: int, seed: int, now: datetime, days: int = 60) -> TrafficSpec:
    """The demo's and the benchmark's traffic: ``days`` of journeys ending at ``now``'s
    midnight (UTC), with ~1 % re-sent duplicates and ~0.5 % invalid messages."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return TrafficSpec(
        leads=leads,
        seed=seed,
        start=today - timedelta(days=days),
        days=days,
        duplicate_rate=0.01,
        invalid_rate=0.005,
    )


def generate(spec: TrafficSpec) -> Iterator[Message]:
    """Yield the stream lazily, in the order a broker would receive it (by event time)."""
    rng = random.Random(spec.seed)
    start = spec.start.astimezone(UTC).replace(microsecond=0)  # times are whole seconds
    end = start + timedelta(days=spec.days)
    spread = spec.days * 86400 * ARRIVAL_SHARE / max(spec.leads, 1)  # seconds between arrivals
    ids, order = itertools.count(1), itertools.count()
    # (stream time, tie-breaker, journey, its next step) or (time, tie, None, a duplicate)
    heap: list[tuple[datetime, int, Iterator[Step] | None, Step | Message]] = []

    def follow(journey: Iterator[Step]) -> None:
        step = next(journey, None)
        if step is not None and step[0] < end:  # the window closes every journey
            heapq.heappush(heap, (step[0], next(order), journey, step))

    arrived = 0
    arrival = start + timedelta(seconds=int(spread * rng.random()))
    while True:
        # Admit every lead arriving before the earliest pending step: none can come earlier.
        while arrived < spec.leads and (not heap or arrival <= heap[0][0]):
            arrived += 1
            anonymous = rng.random() < spec.anonymous_share
            follow(_journey(rng, _new_lead(rng, arrived, anonymous), arrival))
            if rng.random() < CRAWLER_SHARE:
                follow(_crawl(rng, arrival + timedelta(seconds=rng.randrange(48 * 3600))))
            arrival = start + timedelta(seconds=int(spread * (arrived + rng.random())))
        if not heap:
            return
        _, _, journey, item = heapq.heappop(heap)
        if journey is None:
            assert isinstance(item, Message)
            yield item
            continue
        assert isinstance(item, tuple)
        t, topic, doc = item
        doc["event_id"] = f"{spec.seed}-{next(ids)}"
        key = str(doc.get("lead_id") or doc.get("anonymous_id")).encode()
        value = _JSON.encode(doc).encode()
        message = Message(topic, key, value, True, t)
        yield message
        if spec.duplicate_rate and rng.random() < spec.duplicate_rate:
            # A producer retry arrives seconds later; a replayed batch, hours later.
            delay = rng.uniform(1, 30) if rng.random() < 0.7 else rng.uniform(3600, 48 * 3600)
            heapq.heappush(heap, (t + timedelta(seconds=delay), next(order), None, message))
        if spec.invalid_rate and rng.random() < spec.invalid_rate:
            doc = dict(doc, event_id=f"{spec.seed}-{next(ids)}")
            yield Message(topic, key, _broken(rng, topic, doc, t), False, t)
        follow(journey)
