//! Country facts for an ISO 3166-1 alpha-2 code: English name, currencies,
//! official languages, continent and EU membership (docs/design.md §3).
//!
//! Nothing here is typed by hand. `keshvar` (the countries gem data, with
//! Debian iso-codes translations) gives names, official languages, the
//! continent, EU membership and each country's main currency; `iso_currency`
//! (the ISO 4217 list) says which currencies a country uses. The table is built
//! once, on first use, into a 26x26 array indexed by the code's letters, so a
//! lookup is two subtractions and a bounds check.
//!
//! Rules, applied to every country alike:
//!
//! - **Name**: the shortest of the English translation, the ISO short name,
//!   and each of keshvar's unofficial names that one of those two begins
//!   with while leaving out at least one whole word. So "United Kingdom of
//!   Great Britain and Northern Ireland" becomes "United Kingdom", "Russian
//!   Federation" "Russia", "Syrian Arab Republic" "Syria"; the unofficial
//!   names in other languages do not qualify ("Surinam" leaves out a letter
//!   of "Suriname", not a word). Hard cases: GB United Kingdom, US United
//!   States, KR South Korea, KP North Korea, RU Russia, IR Iran, TW Taiwan,
//!   BO Bolivia, VE Venezuela, TZ Tanzania, CD "Congo (Democratic Republic
//!   of the)", VN Vietnam, LA "Lao People's Democratic Republic" (the data's
//!   "Laos" does not begin it), MD Moldova, SY Syria, FM Micronesia, VA
//!   "Holy See", PS Palestine, VG "Virgin Islands, British". The geo
//!   database's own English name, when it has one, is preferred by the
//!   caller.
//! - **Currencies**: ISO 4217 decides which currencies a country uses, less
//!   funds (CHE, USN...), special codes (XDR, XAU...) and superseded ones
//!   (HRK, VES...). keshvar's main currency goes first when ISO 4217 agrees
//!   it is used there (or lists no country at all for it, as for NAD); the
//!   rest follow in code order. PA gives PAB, USD; TL gives USD (keshvar
//!   still says IDR); AQ and GS give none.
//! - **Languages**: keshvar's official languages (ISO 639-1, in the data's
//!   alphabetical order) tagged with the country, `lang-CC`: CH gives de-CH,
//!   fr-CH, it-CH, rm-CH.
//! - **Continent**: keshvar's continent as the two-letter code GeoIP uses;
//!   its "Australia" is Oceania (OC).
//!
//! Kosovo is not in ISO 3166-1 or keshvar, but every geo database gives it
//! the user-assigned code XK, so it is added by hand: "Kosovo", the euro,
//! Albanian and Serbian (sq-XK, sr-XK), Europe, not in the EU.

use std::sync::LazyLock;

use iso_currency::Currency;
use keshvar::{Continent, Country};

/// What visitord knows about one country.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryFacts {
    /// ISO 3166-1 alpha-2 code, upper case.
    pub code: &'static str,
    /// Common short English name ("United Kingdom").
    pub name: &'static str,
    /// ISO 4217 codes, main currency first; empty when none is known.
    pub currencies: Vec<&'static str>,
    /// BCP 47 tags of the official languages, `lang-CC`; may be empty.
    pub languages: Vec<String>,
    /// AF, AN, AS, EU, NA, OC or SA.
    pub continent_code: &'static str,
    /// Member of the European Union.
    pub is_eu: bool,
}

const LETTERS: usize = 26;
const SLOTS: usize = LETTERS * LETTERS;

/// "AAABAC...ZZ": every two-letter code, so that `CountryFacts::code` can
/// be `&'static str` without leaking one allocation per country.
const CODE_BYTES: [u8; 2 * SLOTS] = {
    let mut bytes = [0u8; 2 * SLOTS];
    let mut slot = 0;
    while slot < SLOTS {
        bytes[2 * slot] = b'A' + (slot / LETTERS) as u8;
        bytes[2 * slot + 1] = b'A' + (slot % LETTERS) as u8;
        slot += 1;
    }
    bytes
};

static CODES: &str = match std::str::from_utf8(&CODE_BYTES) {
    Ok(codes) => codes,
    // Unreachable (the bytes are ASCII letters); an empty string would make
    // every country unknown, which the tests catch.
    Err(_) => "",
};

static TABLE: LazyLock<Box<[Option<CountryFacts>]>> = LazyLock::new(build_table);

/// Facts for a two-letter country code, any case. `None` for anything that
/// is not an assigned ISO 3166-1 alpha-2 code known to the data.
pub fn lookup(code: &str) -> Option<&'static CountryFacts> {
    TABLE.get(slot(code.as_bytes())?)?.as_ref()
}

/// Builds the table now rather than on the first request that needs it
/// (a few milliseconds: every country's translations are read).
pub fn warm_up() {
    LazyLock::force(&TABLE);
}

/// Every known country, in code order.
pub fn all() -> impl Iterator<Item = &'static CountryFacts> {
    TABLE.iter().flatten()
}

fn slot(code: &[u8]) -> Option<usize> {
    let &[first, second] = code else {
        return None;
    };
    let letter = |c: u8| {
        c.is_ascii_alphabetic()
            .then(|| usize::from(c.to_ascii_uppercase() - b'A'))
    };
    Some(letter(first)? * LETTERS + letter(second)?)
}

fn build_table() -> Box<[Option<CountryFacts>]> {
    let mut table: Vec<Option<CountryFacts>> =
        std::iter::repeat_with(|| None).take(SLOTS).collect();
    for country in keshvar::CountryIterator::new() {
        let alpha2 = country.alpha2().to_string();
        let Some(slot) = slot(alpha2.as_bytes()) else {
            continue;
        };
        let Some(code) = CODES.get(2 * slot..2 * slot + 2) else {
            continue;
        };
        if let Some(entry) = table.get_mut(slot) {
            *entry = Some(CountryFacts {
                code,
                name: english_name(&country),
                currencies: currencies(&country, code),
                languages: languages(&country, code),
                continent_code: continent_code(country.continent()),
                is_eu: country.eu_member(),
            });
        }
    }
    if let Some(entry @ None) = slot(b"XK").and_then(|s| table.get_mut(s)) {
        *entry = Some(CountryFacts {
            code: "XK",
            name: "Kosovo",
            currencies: vec!["EUR"],
            languages: vec!["sq-XK".to_owned(), "sr-XK".to_owned()],
            continent_code: "EU",
            is_eu: false,
        });
    }
    table.into_boxed_slice()
}

fn english_name(country: &Country) -> &'static str {
    let formal = [
        country.translations().get("en").copied(),
        Some(country.iso_short_name()),
    ];
    let formal = formal.iter().flatten();
    let shortened = country.unofficial_name_list().iter().filter(|short| {
        formal.clone().any(|name| {
            name.strip_prefix(**short)
                .is_some_and(|rest| rest.contains(|c: char| !c.is_alphanumeric()))
        })
    });
    formal
        .clone()
        .chain(shortened)
        .copied()
        .filter(|name| !name.is_empty())
        // min_by_key keeps the first of equals: the translation wins ties.
        .min_by_key(|name| name.chars().count())
        .unwrap_or_default()
}

fn currencies(country: &Country, code: &str) -> Vec<&'static str> {
    let is_current = |c: &Currency| !c.is_fund() && !c.is_special() && c.is_superseded().is_none();
    let mut used: Vec<Currency> = code
        .parse::<iso_currency::Country>()
        .map(Currency::from_country)
        .unwrap_or_default();
    used.retain(is_current);
    used.sort_by_key(|c| c.code());
    let main = Currency::from_code(&country.currency_code().to_string())
        .filter(|c| is_current(c) && (used.contains(c) || c.used_by().is_empty()));
    main.into_iter()
        .chain(used.into_iter().filter(|c| Some(*c) != main))
        .map(|c| c.code())
        .collect()
}

fn languages(country: &Country, code: &str) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for language in country.maybe_official_language_list().unwrap_or_default() {
        let tag = format!("{}-{code}", language.to_ascii_lowercase());
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

fn continent_code(continent: Continent) -> &'static str {
    match continent {
        Continent::Africa => "AF",
        Continent::Antarctica => "AN",
        Continent::Asia => "AS",
        // keshvar's "Australia" holds Australia and the Pacific islands.
        Continent::Australia => "OC",
        Continent::Europe => "EU",
        Continent::NorthAmerica => "NA",
        Continent::SouthAmerica => "SA",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every two-letter code, "AA" to "ZZ".
    fn every_pair() -> impl Iterator<Item = String> {
        (b'A'..=b'Z')
            .flat_map(|a| (b'A'..=b'Z').map(move |b| String::from_utf8_lossy(&[a, b]).into_owned()))
    }

    #[test]
    fn covers_exactly_the_iso_3166_1_codes() {
        // iso_country (the list iso_currency ships) is a second, independent
        // source for which codes ISO 3166-1 assigns.
        let assigned: Vec<String> = every_pair()
            .filter(|code| code.parse::<iso_currency::Country>().is_ok())
            .collect();
        assert_eq!(assigned.len(), 249);
        // ...plus Kosovo's XK, which ISO leaves unassigned.
        let known: Vec<&str> = all()
            .map(|facts| facts.code)
            .filter(|&code| code != "XK")
            .collect();
        assert_eq!(known, assigned);
        assert_eq!(all().count(), 250);
    }

    /// Countries for which the data holds no current currency.
    const WITHOUT_CURRENCY: [&str; 2] = ["AQ", "GS"];
    /// Countries for which the data holds no official language.
    const WITHOUT_LANGUAGE: [&str; 2] = ["AQ", "BV"];

    #[test]
    fn every_country_is_complete() {
        for facts in all() {
            let code = facts.code;
            assert_eq!(lookup(code), Some(facts));
            assert!(!facts.name.is_empty(), "{code}: no name");
            assert_eq!(
                facts.currencies.is_empty(),
                WITHOUT_CURRENCY.contains(&code),
                "{code}: currencies {:?}",
                facts.currencies
            );
            assert_eq!(
                facts.languages.is_empty(),
                WITHOUT_LANGUAGE.contains(&code),
                "{code}: languages {:?}",
                facts.languages
            );
            for currency in &facts.currencies {
                let iso = Currency::from_code(currency);
                assert!(
                    iso.is_some_and(|c| !c.is_fund() && !c.is_special()),
                    "{code}: {currency}"
                );
            }
            for tag in &facts.languages {
                let (language, region) = tag.split_once('-').unwrap_or_default();
                assert_eq!(region, code, "{code}: {tag}");
                assert!((2..=3).contains(&language.len()), "{code}: {tag}");
                assert!(
                    language.bytes().all(|b| b.is_ascii_lowercase()),
                    "{code}: {tag}"
                );
            }
            assert!(
                ["AF", "AN", "AS", "EU", "NA", "OC", "SA"].contains(&facts.continent_code),
                "{code}: {}",
                facts.continent_code
            );
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = all().map(|facts| facts.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count);
    }

    #[test]
    fn common_short_english_names() {
        let cases = [
            ("GB", "United Kingdom"),
            ("US", "United States"),
            ("KR", "South Korea"),
            ("KP", "North Korea"),
            ("RU", "Russia"),
            ("IR", "Iran"),
            ("TW", "Taiwan"),
            ("BO", "Bolivia"),
            ("VE", "Venezuela"),
            ("TZ", "Tanzania"),
            ("CD", "Congo (Democratic Republic of the)"),
            ("CG", "Congo"),
            ("VN", "Vietnam"),
            ("LA", "Lao People's Democratic Republic"),
            ("MD", "Moldova"),
            ("SY", "Syria"),
            ("FM", "Micronesia"),
            ("VA", "Holy See"),
            ("PS", "Palestine"),
            ("VG", "Virgin Islands, British"),
            ("DE", "Germany"),
            ("CI", "Côte d'Ivoire"),
            ("AX", "Åland"),
            ("SR", "Suriname"),
        ];
        for (code, name) in cases {
            assert_eq!(lookup(code).map(|f| f.name), Some(name), "{code}");
        }
    }

    #[test]
    fn currencies_main_first_then_code_order() {
        let cases: [(&str, &[&str]); 14] = [
            ("CH", &["CHF"]),
            ("US", &["USD"]),
            ("GB", &["GBP"]),
            ("IN", &["INR"]),
            ("ZA", &["ZAR"]),
            ("PA", &["PAB", "USD"]),
            ("BT", &["BTN", "INR"]),
            ("NA", &["NAD", "ZAR"]),
            ("SV", &["USD", "SVC"]),
            ("ZW", &["ZWG"]),
            ("VE", &["VED"]),
            ("HR", &["EUR"]),
            ("BG", &["EUR"]),
            ("TL", &["USD"]),
        ];
        for (code, currencies) in cases {
            assert_eq!(
                lookup(code).map(|f| &*f.currencies),
                Some(currencies),
                "{code}"
            );
        }
    }

    #[test]
    fn official_languages_as_bcp47_tags() {
        let cases: [(&str, &[&str]); 7] = [
            ("CH", &["de-CH", "fr-CH", "it-CH", "rm-CH"]),
            ("IN", &["en-IN", "hi-IN"]),
            (
                "ZA",
                &[
                    "af-ZA", "en-ZA", "nr-ZA", "ss-ZA", "st-ZA", "tn-ZA", "ts-ZA", "ve-ZA",
                    "xh-ZA", "zu-ZA",
                ],
            ),
            ("GB", &["en-GB"]),
            ("US", &["en-US"]),
            ("BE", &["de-BE", "fr-BE", "nl-BE"]),
            ("AQ", &[]),
        ];
        for (code, languages) in cases {
            let found: Option<Vec<&str>> =
                lookup(code).map(|f| f.languages.iter().map(|l| &**l).collect());
            assert_eq!(found.as_deref(), Some(languages), "{code}");
        }
    }

    #[test]
    fn territories() {
        // (code, name, currencies, first language, continent, EU)
        let cases = [
            ("PR", "Puerto Rico", &["USD"], "en-PR", "NA", false),
            ("GU", "Guam", &["USD"], "ch-GU", "OC", false),
            ("GL", "Greenland", &["DKK"], "kl-GL", "NA", false),
            ("RE", "Réunion", &["EUR"], "fr-RE", "AF", true),
            ("HK", "Hong Kong", &["HKD"], "en-HK", "AS", false),
            ("MO", "Macao", &["MOP"], "pt-MO", "AS", false),
        ];
        for (code, name, currencies, language, continent, eu) in cases {
            let facts = lookup(code).unwrap_or_else(|| panic!("{code} unknown"));
            assert_eq!(facts.name, name, "{code}");
            assert_eq!(&*facts.currencies, &currencies[..], "{code}");
            assert_eq!(
                facts.languages.first().map(|l| &**l),
                Some(language),
                "{code}"
            );
            assert_eq!(facts.continent_code, continent, "{code}");
            assert_eq!(facts.is_eu, eu, "{code}");
        }
    }

    #[test]
    fn eu_membership() {
        for (code, eu) in [
            ("DE", true),
            ("FR", true),
            ("IE", true),
            ("CY", true),
            ("CH", false),
            ("GB", false),
            ("NO", false),
            ("TR", false),
        ] {
            assert_eq!(lookup(code).map(|f| f.is_eu), Some(eu), "{code}");
        }
    }

    #[test]
    fn continents() {
        for (code, continent) in [
            ("RU", "EU"),
            ("TR", "EU"),
            ("EG", "AF"),
            ("AU", "OC"),
            ("NZ", "OC"),
            ("BR", "SA"),
            ("CA", "NA"),
            ("JP", "AS"),
            ("AQ", "AN"),
        ] {
            assert_eq!(
                lookup(code).map(|f| f.continent_code),
                Some(continent),
                "{code}"
            );
        }
    }

    /// Kosovo: in every geo database as XK, in no ISO list.
    #[test]
    fn kosovo_is_known_as_xk() {
        let k = lookup("xk").unwrap();
        assert_eq!(
            (k.code, k.name, &k.currencies[..], k.continent_code, k.is_eu),
            ("XK", "Kosovo", &["EUR"][..], "EU", false)
        );
        assert_eq!(k.languages, ["sq-XK", "sr-XK"]);
    }

    #[test]
    fn any_case_and_only_two_letters() {
        assert_eq!(lookup("gb").map(|f| f.code), Some("GB"));
        assert_eq!(lookup("Gb").map(|f| f.code), Some("GB"));
        for invalid in ["", "U", "USA", "Z9", "9Z", "ZZ", "XX", "É", "G\u{0}", " GB"] {
            assert_eq!(lookup(invalid), None, "{invalid:?}");
        }
    }
}
