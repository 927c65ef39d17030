//! One simulated person: who they are (the plan), and what the source systems record of them
//! over time (sessions on web and app, sign-up and logins, orders, e-mails, shop purchases).

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const DAY: i64 = 86_400_000_000;
const MINUTE: i64 = 60_000_000;

/// Everything generated for one person.
#[derive(Debug, Default)]
pub struct Generated {
    pub person_id: String,
    pub web: Vec<String>,
    pub app: Vec<String>,
    pub email: Vec<String>,
    pub crm: Option<Vec<String>>,
    pub pos: Vec<PosOrder>,
    /// (id_type, raw value) pairs that belong to this person.
    pub truth: BTreeSet<(String, String)>,
}

/// A point-of-sale order row.
#[derive(Debug, Clone)]
pub struct PosOrder {
    pub order_id: String,
    pub ordered_at: i64,
    pub store_id: String,
    pub email: Option<String>,
    pub loyalty_id: Option<String>,
    pub total: f64,
    pub currency: String,
}

/// Who a person is; a pure function of (seed, person) so that a household member can read it.
struct Plan {
    first_seen: i64,
    end: i64,
    country: &'static str,
    first: &'static str,
    last: &'static str,
    email: String,
    user_id: Option<String>,
    signup_at: Option<i64>,
    phone: Option<Phone>,
    in_crm: bool,
    loyalty_id: Option<String>,
    email_consent: bool,
    sms_consent: bool,
    ads_consent: bool,
    zip: String,
    app_user: bool,
    sessions_per_month: f64,
    buy_rate: f64,
}

struct Phone {
    /// The digits after the country code.
    national: String,
    code: &'static str,
}

const COUNTRIES: &[(&str, u32, &str, &str)] = &[
    ("DE", 50, "49", "EUR"),
    ("AT", 10, "43", "EUR"),
    ("CH", 10, "41", "CHF"),
    ("US", 15, "1", "USD"),
    ("GB", 10, "44", "GBP"),
    ("FR", 5, "33", "EUR"),
];
const FIRST: &[&str] = &[
    "ana", "ben", "clara", "david", "emma", "felix", "greta", "hugo", "ida", "jonas", "lena",
    "max", "mia", "noah", "olivia", "paul", "rosa", "sam", "tara", "yusuf",
];
const LAST: &[&str] = &[
    "mueller",
    "schmidt",
    "schneider",
    "fischer",
    "weber",
    "meyer",
    "wagner",
    "becker",
    "smith",
    "jones",
    "brown",
    "martin",
    "bernard",
    "huber",
    "keller",
    "garcia",
];
const DOMAINS: &[&str] = &["example.com", "mail.example", "example.org", "post.example"];
const CATEGORIES: &[&str] = &["shoes", "shirts", "jackets", "bags", "accessories"];

fn rng_for(seed: u64, person: u64, stream: &str) -> ChaCha8Rng {
    let key = format!("{seed}/{person}/{stream}");
    ChaCha8Rng::seed_from_u64(xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// A postal code in the country's format.
fn postal_code(country: &str, r: &mut ChaCha8Rng) -> String {
    match country {
        "AT" | "CH" => format!("{}", r.random_range(1000..10000)),
        "GB" => {
            let l = |r: &mut ChaCha8Rng| (b'A' + r.random_range(0..26u8)) as char;
            format!(
                "{}{}{} {}{}{}",
                l(r),
                l(r),
                r.random_range(1..10),
                r.random_range(1..10),
                l(r),
                l(r)
            )
        }
        "US" => format!(
            "{:05}-{:04}",
            r.random_range(10000..99999),
            r.random_range(0..10000)
        ),
        _ => format!("{:05}", r.random_range(1000..99999)),
    }
}

fn plan_of(seed: u64, p: u64, days: u32, as_of: i64) -> Plan {
    let mut r = rng_for(seed, p, "plan");
    let first_seen = as_of - (r.random_range(0.0..1.0f64) * days as f64 * DAY as f64) as i64;
    let total: u32 = COUNTRIES.iter().map(|c| c.1).sum();
    let mut pick = r.random_range(0..total);
    let country = COUNTRIES
        .iter()
        .find(|c| {
            if pick < c.1 {
                true
            } else {
                pick -= c.1;
                false
            }
        })
        .expect("weights cover the range");
    let first = FIRST[r.random_range(0..FIRST.len())];
    let last = LAST[r.random_range(0..LAST.len())];
    let email = format!(
        "{first}.{last}{p}@{}",
        DOMAINS[r.random_range(0..DOMAINS.len())]
    );
    let registered = r.random_bool(0.65);
    let signup_at =
        registered.then(|| first_seen + (r.random_range(0.0..4.0f64) * DAY as f64) as i64 + MINUTE);
    let phone = r.random_bool(0.6).then(|| Phone {
        national: format!(
            "15{}{:07}",
            r.random_range(1..10),
            // Distinct per person (7919 is prime to 10^7): random numbers would collide between
            // people at demo scale, and the truth would call that an over-merge.
            (p * 7919) % 10_000_000
        ),
        code: country.2,
    });
    let loyalty = r.random_bool(0.3);
    let in_crm = loyalty
        || if registered {
            r.random_bool(0.8)
        } else {
            r.random_bool(0.1)
        };
    let churned = r.random_bool(0.4);
    let end = if churned {
        first_seen + ((as_of - first_seen) as f64 * r.random_range(0.1..1.0f64)) as i64
    } else {
        as_of
    };
    let sessions_per_month = (0.4 + r.random_range(-1.2..1.2f64)).exp().min(20.0);
    // Fields added later draw from a stream of their own, so every earlier draw stays as it was.
    let mut extra = rng_for(seed, p, "extra");
    Plan {
        first_seen,
        end: end.max(signup_at.unwrap_or(first_seen) + MINUTE),
        country: country.0,
        first,
        last,
        email,
        user_id: registered.then(|| format!("u{p:07}")),
        signup_at,
        phone,
        in_crm,
        loyalty_id: loyalty.then(|| format!("L{:08}", p * 7 + 3)),
        email_consent: r.random_bool(0.7),
        sms_consent: r.random_bool(0.4),
        ads_consent: extra.random_bool(0.5),
        zip: postal_code(country.0, &mut extra),
        app_user: r.random_bool(0.4),
        sessions_per_month,
        buy_rate: r.random_range(0.05..0.35),
    }
}

/// Whether person `p` (even) shares a web device with person `p + 1`.
fn shares_device(seed: u64, p: u64) -> bool {
    p.is_multiple_of(2) && rng_for(seed, p, "household").random_bool(0.01)
}

fn device_id(seed: u64, p: u64, kind: &str, n: u32) -> String {
    let mut r = rng_for(seed, p, &format!("device/{kind}/{n}"));
    uuid(&mut r)
}

fn uuid(r: &mut ChaCha8Rng) -> String {
    let a: u128 = r.random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn iso(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .expect("in range")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A raw spelling of an e-mail as a source system might export it.
fn noisy_email(r: &mut ChaCha8Rng, email: &str) -> String {
    match r.random_range(0..10) {
        0 => email.to_uppercase(),
        1 => format!(" {email} "),
        2 => {
            let mut c = email.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase().collect::<String>() + c.as_str()
            })
        }
        _ => email.to_string(),
    }
}

/// A raw spelling of a phone number: international forms always; national forms only for the
/// workspace's default country (DE), where they can be read back unambiguously.
fn noisy_phone(r: &mut ChaCha8Rng, phone: &Phone) -> String {
    let n = &phone.national;
    let national_ok = phone.code == "49";
    match r.random_range(0..5) {
        0 if national_ok => format!("0{} {}", &n[..3], &n[3..]),
        1 if national_ok => format!("0{}-{}", &n[..3], &n[3..]),
        2 => format!("+{} ({}) {} {}", phone.code, &n[..3], &n[3..6], &n[6..]),
        3 => format!("00{}{}", phone.code, n),
        _ => format!("+{}{}", phone.code, n),
    }
}

struct Emitter<'a> {
    r: ChaCha8Rng,
    /// The as-of time: nothing is recorded from then on.
    until: i64,
    g: &'a mut Generated,
    source_currency: &'static str,
}

impl Emitter<'_> {
    fn message_id(&mut self) -> String {
        uuid(&mut self.r)
    }

    fn emit(&mut self, target: Target, mut message: Value, at: i64) {
        if at >= self.until {
            return;
        }
        let id = self.message_id();
        let m = message.as_object_mut().expect("object");
        m.insert("messageId".into(), Value::String(id));
        m.insert("timestamp".into(), Value::String(iso(at)));
        m.insert(
            "sentAt".into(),
            Value::String(iso(at + self.r.random_range(0..5_000_000))),
        );
        let line = message.to_string();
        match target {
            Target::Web => self.g.web.push(line),
            Target::App => self.g.app.push(line),
            Target::Email => self.g.email.push(line),
        }
    }
}

#[derive(Clone, Copy)]
enum Target {
    Web,
    App,
    Email,
}

/// Simulates person `p`.
pub fn generate(seed: u64, p: u64, _people: u64, days: u32, as_of: i64) -> Generated {
    let plan = plan_of(seed, p, days, as_of);
    let mut g = Generated {
        person_id: format!("p{p:07}"),
        ..Generated::default()
    };
    let currency = COUNTRIES
        .iter()
        .find(|c| c.0 == plan.country)
        .map_or("EUR", |c| c.3);
    let mut e = Emitter {
        r: rng_for(seed, p, "events"),
        until: as_of,
        g: &mut g,
        source_currency: currency,
    };

    // Devices: one or two browsers, maybe a phone app; a household member's browser.
    let web_devices: Vec<String> = (0..e.r.random_range(1..=2u32))
        .map(|n| device_id(seed, p, "web", n))
        .collect();
    let app_device = plan.app_user.then(|| device_id(seed, p, "app", 0));
    let shared = if !p.is_multiple_of(2) && shares_device(seed, p - 1) {
        let owner = plan_of(seed, p - 1, days, as_of);
        match (owner.signup_at, plan.signup_at) {
            (Some(a), Some(b)) => Some((device_id(seed, p - 1, "web", 0), a.max(b) + DAY)),
            _ => None,
        }
    } else {
        None
    };
    if let Some(u) = &plan.user_id {
        e.g.truth.insert(("user_id".into(), u.clone()));
    }

    // Sessions: a Poisson process between first sight and churn; the sign-up is one of them.
    let rate = plan.sessions_per_month / (30.0 * DAY as f64);
    let mut times = Vec::new();
    let mut t = plan.first_seen;
    loop {
        let u: f64 = e.r.random_range(f64::EPSILON..1.0);
        t += (-u.ln() / rate) as i64;
        if t >= plan.end || t >= as_of {
            break;
        }
        times.push(t);
    }
    times.push(plan.first_seen);
    if let Some(s) = plan.signup_at.filter(|s| *s < as_of) {
        times.push(s);
    }
    times.sort_unstable();
    let mut logged_in: BTreeSet<String> = BTreeSet::new();
    let mut order_seq = 0u32;
    for &at in &times {
        let signed_up = plan.signup_at.is_some_and(|s| at >= s);
        let is_signup = plan.signup_at == Some(at);
        // Before signing up people browse in one browser, and they sign up in it; other
        // devices come later, and they log in on each.
        let (target, device) = match (&app_device, &shared) {
            _ if !signed_up || is_signup => (Target::Web, web_devices[0].clone()),
            (_, Some((dev, from))) if at >= *from && e.r.random_bool(0.3) => {
                (Target::Web, dev.clone())
            }
            (Some(app), _) if e.r.random_bool(0.5) => (Target::App, app.clone()),
            _ => (
                Target::Web,
                web_devices[e.r.random_range(0..web_devices.len())].clone(),
            ),
        };
        if web_devices.contains(&device) || app_device.as_ref() == Some(&device) {
            e.g.truth.insert(("anonymous_id".into(), device.clone()));
        }
        // Shop customers without an account leave their e-mail in the newsletter form.
        if plan.user_id.is_none() && plan.in_crm && at == plan.first_seen {
            let email = noisy_email(&mut e.r, &plan.email);
            e.g.truth.insert(("email".into(), email.clone()));
            let msg = json!({"type": "identify", "anonymousId": device, "traits": {"email": email},
                "context": context(target)});
            e.emit(target, msg, at + 30_000_000);
        }
        let user_id = if signed_up {
            plan.user_id.clone()
        } else {
            None
        };
        if is_signup || (user_id.is_some() && !logged_in.contains(&device)) {
            identify(&mut e, &plan, target, &device, at, is_signup);
            logged_in.insert(device.clone());
        }
        session(
            &mut e,
            &plan,
            target,
            &device,
            user_id.as_deref(),
            at + MINUTE,
            &mut order_seq,
            p,
        );
    }

    // E-mail campaigns every two weeks to those who signed up and agreed.
    if let (Some(user_id), Some(signup), true) = (&plan.user_id, plan.signup_at, plan.email_consent)
    {
        let mut t = signup + e.r.random_range(1..14) * DAY;
        while t < as_of.min(plan.end + 60 * DAY) {
            let campaign = format!("c{}", (t / (14 * DAY)) % 1000);
            if e.r.random_bool(0.35) {
                let msg = json!({"type": "track", "event": "Email Opened", "userId": user_id,
                    "properties": {"campaign_id": campaign, "email_subject": "New arrivals"},
                    "context": {"traits": {"email": plan.email}}});
                e.emit(Target::Email, msg, t);
                if e.r.random_bool(0.3) {
                    let msg = json!({"type": "track", "event": "Email Clicked", "userId": user_id,
                        "properties": {"campaign_id": campaign, "link_url": "https://shop.example/new"},
                        "context": {"traits": {"email": plan.email}}});
                    e.emit(Target::Email, msg, t + 2 * MINUTE);
                }
            }
            t += 14 * DAY;
        }
        e.g.truth.insert(("email".into(), plan.email.clone()));
    }

    crm_and_shop(&mut e, &plan, p, as_of);
    g
}

fn identify(e: &mut Emitter, plan: &Plan, target: Target, device: &str, at: i64, signup: bool) {
    let email = noisy_email(&mut e.r, &plan.email);
    e.g.truth.insert(("email".into(), email.clone()));
    let mut traits = json!({"email": email, "first_name": plan.first, "last_name": plan.last,
        "country": plan.country});
    if signup {
        traits["email_opt_in"] = Value::Bool(plan.email_consent);
        if let Some(phone) = &plan.phone {
            let raw = noisy_phone(&mut e.r, phone);
            e.g.truth.insert(("phone".into(), raw.clone()));
            traits["phone"] = Value::String(raw);
        }
    }
    let msg = json!({"type": "identify", "userId": plan.user_id, "anonymousId": device, "traits": traits,
        "context": context(target)});
    e.emit(target, msg, at);
    if signup {
        let msg = json!({"type": "track", "event": "Signed Up", "userId": plan.user_id,
            "anonymousId": device, "properties": {"method": "email"}, "context": context(target)});
        e.emit(target, msg, at + 1_000_000);
    }
}

fn context(target: Target) -> Value {
    match target {
        Target::App => json!({"app": {"name": "Shop", "version": "4.2.0"}, "os": {"name": "iOS"},
            "library": {"name": "analytics-ios", "version": "4.1.8"}}),
        _ => json!({"library": {"name": "analytics.js", "version": "2.11.1"},
            "userAgent": "Mozilla/5.0"}),
    }
}

#[allow(clippy::too_many_arguments)]
fn session(
    e: &mut Emitter,
    plan: &Plan,
    target: Target,
    device: &str,
    user_id: Option<&str>,
    start: i64,
    order_seq: &mut u32,
    p: u64,
) {
    let mut t = start;
    let base = |kind: &str| {
        let mut m = json!({"type": kind, "anonymousId": device, "context": context(target)});
        if let Some(u) = user_id {
            m["userId"] = Value::String(u.to_string());
        }
        m
    };
    let view_type = if matches!(target, Target::App) {
        "screen"
    } else {
        "page"
    };
    let mut home = base(view_type);
    home["name"] = json!("Home");
    home["properties"] = json!({"path": "/", "url": "https://shop.example/", "title": "Shop"});
    e.emit(target, home, t);
    let mut cart: Vec<Value> = Vec::new();
    for _ in 0..e.r.random_range(0..5) {
        t += e.r.random_range(10..180) * 1_000_000;
        let category = CATEGORIES[e.r.random_range(0..CATEGORIES.len())];
        let sku = format!("SKU-{}", e.r.random_range(100..400));
        let price = (e.r.random_range(15.0..180.0f64) * 100.0).round() / 100.0;
        let mut page = base(view_type);
        page["name"] = json!("Product");
        page["properties"] = json!({"path": format!("/p/{sku}"), "url": format!("https://shop.example/p/{sku}"), "title": sku, "category": category});
        e.emit(target, page, t);
        let product = json!({"product_id": sku, "sku": sku, "category": category, "price": price, "quantity": 1, "currency": e.source_currency});
        let mut viewed = base("track");
        viewed["event"] = json!("Product Viewed");
        viewed["properties"] = product.clone();
        e.emit(target, viewed, t + 500_000);
        if e.r.random_bool(0.3) {
            let mut added = base("track");
            added["event"] = json!("Product Added");
            added["properties"] = product.clone();
            e.emit(target, added, t + 20_000_000);
            cart.push(product);
        }
    }
    if cart.is_empty() || !e.r.random_bool(0.6) {
        return;
    }
    t += 60_000_000;
    let total: f64 = cart
        .iter()
        .map(|p| p["price"].as_f64().unwrap_or(0.0))
        .sum();
    let total = (total * 100.0).round() / 100.0;
    let mut checkout = base("track");
    checkout["event"] = json!("Checkout Started");
    checkout["properties"] =
        json!({"value": total, "currency": e.source_currency, "products": cart});
    e.emit(target, checkout, t);
    let buys = match user_id {
        Some(_) => e.r.random_bool((plan.buy_rate * 2.5).min(0.9)),
        None => e.r.random_bool(plan.buy_rate),
    };
    if buys {
        if user_id.is_none() {
            // A guest checkout asks for an e-mail address.
            let email = noisy_email(&mut e.r, &plan.email);
            e.g.truth.insert(("email".into(), email.clone()));
            let mut guest = base("identify");
            guest["traits"] = json!({"email": email});
            e.emit(target, guest, t + 80_000_000);
        }
        *order_seq += 1;
        let mut order = base("track");
        order["event"] = json!("Order Completed");
        order["properties"] = json!({"order_id": format!("W{p}-{order_seq}"), "revenue": total, "total": total,
            "currency": e.source_currency, "products": cart});
        e.emit(target, order, t + 90_000_000);
    }
}

fn crm_and_shop(e: &mut Emitter, plan: &Plan, p: u64, as_of: i64) {
    if !plan.in_crm {
        return;
    }
    let contact_id = format!("C{:08}", p * 3 + 11);
    e.g.truth.insert(("crm_id".into(), contact_id.clone()));
    let email = noisy_email(&mut e.r, &plan.email);
    e.g.truth.insert(("email".into(), email.clone()));
    let phone = plan.phone.as_ref().map(|ph| noisy_phone(&mut e.r, ph));
    if let Some(ph) = &phone {
        e.g.truth.insert(("phone".into(), ph.clone()));
    }
    if let Some(l) = &plan.loyalty_id {
        e.g.truth.insert(("loyalty_id".into(), l.clone()));
    }
    let yes_no = |b: bool, r: &mut ChaCha8Rng| match r.random_range(0..3) {
        0 => {
            if b {
                "yes"
            } else {
                "no"
            }
        }
        1 => {
            if b {
                "true"
            } else {
                "false"
            }
        }
        _ => {
            if b {
                "Y"
            } else {
                "N"
            }
        }
    };
    let case = |s: &str, r: &mut ChaCha8Rng| {
        if r.random_bool(0.2) {
            s.to_uppercase()
        } else {
            let mut c = s.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase().collect::<String>() + c.as_str()
            })
        }
    };
    let first = case(plan.first, &mut e.r);
    let last = case(plan.last, &mut e.r);
    let email_opt = yes_no(plan.email_consent, &mut e.r).to_string();
    let sms_opt = if plan.phone.is_some() {
        yes_no(plan.sms_consent, &mut e.r).to_string()
    } else {
        String::new()
    };
    e.g.crm = Some(vec![
        contact_id,
        first,
        last,
        email,
        phone.unwrap_or_default(),
        plan.country.to_string(),
        plan.loyalty_id.clone().unwrap_or_default(),
        email_opt,
        sms_opt,
        if plan.ads_consent { "yes" } else { "no" }.to_string(),
        plan.zip.clone(),
        iso(plan.first_seen - 30 * DAY),
    ]);
    // Shop purchases, keyed by the e-mail given at the till or by the loyalty card.
    let orders = e.r.random_range(0..4);
    for n in 0..orders {
        let at = plan.first_seen
            + ((as_of - 1 - plan.first_seen) as f64 * e.r.random_range(0.0..1.0f64)) as i64;
        let by_card = plan.loyalty_id.is_some() && e.r.random_bool(0.5);
        let email = (!by_card).then(|| noisy_email(&mut e.r, &plan.email));
        if let Some(m) = &email {
            e.g.truth.insert(("email".into(), m.clone()));
        }
        e.g.pos.push(PosOrder {
            order_id: format!("S{p}-{n}"),
            ordered_at: at,
            store_id: format!("store-{}", e.r.random_range(1..25)),
            email,
            loyalty_id: if by_card {
                plan.loyalty_id.clone()
            } else {
                None
            },
            total: (e.r.random_range(10.0..250.0f64) * 100.0).round() / 100.0,
            currency: e.source_currency.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_is_a_function_of_seed_and_index() {
        let as_of = 1_782_864_000_000_000;
        let a = generate(7, 12, 100, 365, as_of);
        let b = generate(7, 12, 100, 365, as_of);
        assert_eq!(a.web, b.web);
        assert_eq!(a.truth, b.truth);
        let c = generate(8, 12, 100, 365, as_of);
        assert_ne!(a.web, c.web);
    }

    #[test]
    fn noisy_phones_keep_their_digits() {
        let mut r = rng_for(1, 1, "t");
        let phone = Phone {
            national: "1511234567".into(),
            code: "49",
        };
        for _ in 0..20 {
            let raw = noisy_phone(&mut r, &phone);
            let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
            assert!(digits.ends_with("1511234567"), "{raw}");
        }
    }
}
