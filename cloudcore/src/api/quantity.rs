//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1G`, `1e3`), parsed into integers.
//!
//! Kubernetes keeps quantities as arbitrary-precision decimals; Skerry only needs two integer
//! views of them — CPU in millicores and memory (or any other byte count) in bytes — to validate
//! pod resources, compute the QoS class and project pods for the edge. Both round up, like
//! `Quantity.MilliValue()` / `Quantity.Value()` do, so that `0.1m` CPU still asks for something.
//!
//! Grammar (from `k8s.io/apimachinery/pkg/api/resource`):
//! `<quantity> ::= <signedNumber><suffix>`, suffix one of the binary SI `Ki Mi Gi Ti Pi Ei`, the
//! decimal SI `n u m "" k M G T P E`, or a decimal exponent `e<int>` / `E<int>`.

/// Why a quantity was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity at all (same wording as Kubernetes, so users recognise it).
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Syntax,
    /// A negative amount of a resource.
    #[error("must be greater than or equal to 0")]
    Negative,
    /// More than fits in 64 bits in the asked unit.
    #[error("quantity is too large")]
    TooLarge,
}

/// A parsed quantity: `mantissa / 10^scale * 2^pow2 * 10^pow10`, with its sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    mantissa: u128,
    scale: u32,
    pow2: u32,
    pow10: i32,
}

/// Largest decimal exponent accepted; anything beyond overflows every unit anyway.
const MAX_EXPONENT: i32 = 1000;

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        Some(_) => (false, s),
        None => return Err(QuantityError::Syntax),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(QuantityError::Syntax);
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let frac = frac.trim_end_matches('0');
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 38 {
        return Err(QuantityError::TooLarge);
    }
    let mantissa = if digits.is_empty() {
        0
    } else {
        digits.parse::<u128>().map_err(|_| QuantityError::Syntax)?
    };
    let scale = u32::try_from(frac.len()).map_err(|_| QuantityError::TooLarge)?;
    let (pow2, pow10) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or(QuantityError::Syntax)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Syntax);
            }
            let e: i64 = exp.parse().map_err(|_| QuantityError::TooLarge)?;
            if e.abs() > i64::from(MAX_EXPONENT) {
                return Err(QuantityError::TooLarge);
            }
            (0, e as i32)
        }
    };
    Ok(Parsed {
        negative,
        mantissa,
        scale,
        pow2,
        pow10,
    })
}

/// The quantity times `10^extra10`, rounded up to an integer.
fn scaled(p: Parsed, extra10: i32) -> Result<u64, QuantityError> {
    if p.mantissa == 0 {
        return Ok(0);
    }
    if p.negative {
        return Err(QuantityError::Negative);
    }
    let mut n = p
        .mantissa
        .checked_mul(1u128 << p.pow2)
        .ok_or(QuantityError::TooLarge)?;
    let e10 = i64::from(p.pow10) + i64::from(extra10) - i64::from(p.scale);
    if e10 >= 0 {
        for _ in 0..e10 {
            n = n.checked_mul(10).ok_or(QuantityError::TooLarge)?;
        }
    } else {
        let d = e10.unsigned_abs();
        if d > 38 {
            // n < 10^39 / 10^39: a positive fraction below one, which rounds up to one.
            return Ok(1);
        }
        n = n.div_ceil(10u128.pow(d as u32));
    }
    u64::try_from(n).map_err(|_| QuantityError::TooLarge)
}

/// Parses a CPU quantity into millicores, rounding up: `"100m"` → 100, `"0.5"` → 500, `"2"` → 2000.
pub fn parse_cpu_millis(s: &str) -> Result<u64, QuantityError> {
    scaled(parse(s)?, 3)
}

/// Parses a memory (or storage) quantity into bytes, rounding up: `"64Mi"` → 67108864,
/// `"1G"` → 10^9, `"1e3"` → 1000.
pub fn parse_memory_bytes(s: &str) -> Result<u64, QuantityError> {
    scaled(parse(s)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu_millis("100m"), Ok(100));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis(".5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("+2."), Ok(2000));
        assert_eq!(parse_cpu_millis("1k"), Ok(1_000_000));
        assert_eq!(
            parse_cpu_millis("0.0001"),
            Ok(1),
            "rounds up like MilliValue"
        );
        assert_eq!(parse_cpu_millis("500u"), Ok(1));
        assert_eq!(parse_cpu_millis("0"), Ok(0));
        assert_eq!(parse_cpu_millis("-0"), Ok(0));
        assert_eq!(parse_cpu_millis("1e-3"), Ok(1));
        assert_eq!(parse_cpu_millis("-1"), Err(QuantityError::Negative));
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory_bytes("128974848"), Ok(128_974_848));
        assert_eq!(parse_memory_bytes("1e3"), Ok(1000));
        assert_eq!(parse_memory_bytes("1E3"), Ok(1000));
        assert_eq!(parse_memory_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory_bytes("129e6"), Ok(129_000_000));
        assert_eq!(
            parse_memory_bytes("100m"),
            Ok(1),
            "a tenth of a byte rounds up"
        );
        assert_eq!(parse_memory_bytes("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_memory_bytes("16Ei"), Err(QuantityError::TooLarge));
        assert_eq!(parse_memory_bytes("1e1000"), Err(QuantityError::TooLarge));
        assert_eq!(parse_memory_bytes("1e-1000"), Ok(1));
        assert_eq!(parse_memory_bytes("1e-1001"), Err(QuantityError::TooLarge));
        assert_eq!(parse_memory_bytes("1e-30"), Ok(1));
        assert_eq!(
            parse_memory_bytes("0.000000000000000000000000000000000000000000001"),
            Ok(1)
        );
        assert_eq!(
            parse_memory_bytes("1.00000000000000000000000000000000000000000000"),
            Ok(1)
        );
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "", "-", "+", ".", "1..2", "1.2.3", "abc", "1K", "1ki", "1 Mi", " 1", "1e", "1e+",
            "1Mi2", "1e3.5", "Mi", "1mm", "١",
        ] {
            assert_eq!(
                parse_memory_bytes(bad),
                Err(QuantityError::Syntax),
                "{bad:?}"
            );
            assert!(parse_cpu_millis(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_memory_bytes("9".repeat(50).as_str()),
            Err(QuantityError::TooLarge)
        );
    }
}
