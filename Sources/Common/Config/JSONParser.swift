/// A strict JSON (RFC 8259) reader for machine-written inputs that can be large (endpoints
/// files of 100,000 hosts): one pass over the bytes, no Foundation, no YAML node tree. Limits:
/// nesting depth 64; numbers must fit Int64 or Double. Errors name the byte offset.
public struct JSONParser {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let offset: Int
        public let message: String
        public var description: String { "JSON error at byte \(offset): \(message)" }
    }

    private let b: UnsafeBufferPointer<UInt8>
    private var i = 0
    private var depth = 0
    static let maxDepth = 64

    private init(_ b: UnsafeBufferPointer<UInt8>) { self.b = b }

    /// Parses one JSON value (and nothing after it but whitespace).
    public static func parse(_ text: String) throws(Failure) -> JSON {
        var t = text
        let r: Result<JSON, Failure> = t.withUTF8 { p in
            var parser = JSONParser(p)
            do throws(Failure) {
                let v = try parser.value()
                parser.skipSpace()
                if parser.i != p.count { throw parser.fail("unexpected text after the value") }
                return .success(v)
            } catch { return .failure(error) }
        }
        return try r.get()
    }

    private func fail(_ m: String) -> Failure { Failure(offset: i, message: m) }

    private mutating func skipSpace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    private mutating func value() throws(Failure) -> JSON {
        skipSpace()
        guard i < b.count else { throw fail("unexpected end of input") }
        switch b[i] {
        case UInt8(ascii: "{"):
            depth += 1
            if depth > JSONParser.maxDepth { throw fail("nested deeper than \(JSONParser.maxDepth)") }
            defer { depth -= 1 }
            i += 1
            var out: [(String, JSON)] = []
            skipSpace()
            if i < b.count && b[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
            while true {
                skipSpace()
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                let k = try string()
                skipSpace()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                out.append((k, try value()))
                skipSpace()
                guard i < b.count else { throw fail("unexpected end of input") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            depth += 1
            if depth > JSONParser.maxDepth { throw fail("nested deeper than \(JSONParser.maxDepth)") }
            defer { depth -= 1 }
            i += 1
            var out: [JSON] = []
            skipSpace()
            if i < b.count && b[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
            while true {
                out.append(try value())
                skipSpace()
                guard i < b.count else { throw fail("unexpected end of input") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        default: return try number()
        }
    }

    private mutating func literal(_ word: StaticString) throws(Failure) {
        let n = word.utf8CodeUnitCount
        guard i + n <= b.count else { throw fail("unexpected end of input") }
        for k in 0..<n where b[i + k] != word.utf8Start[k] { throw fail("invalid literal") }
        i += n
    }

    private mutating func number() throws(Failure) -> JSON {
        let start = i
        if i < b.count && b[i] == UInt8(ascii: "-") { i += 1 }
        var isInt = true
        let digitsStart = i
        while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 { i += 1 }
        if i == digitsStart { throw fail("invalid value") }
        if b[digitsStart] == 0x30 && i - digitsStart > 1 { throw fail("leading zero in a number") }
        if i < b.count && b[i] == UInt8(ascii: ".") {
            isInt = false; i += 1
            let f = i
            while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 { i += 1 }
            if i == f { throw fail("invalid number") }
        }
        if i < b.count && (b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E")) {
            isInt = false; i += 1
            if i < b.count && (b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-")) { i += 1 }
            let e = i
            while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 { i += 1 }
            if i == e { throw fail("invalid number") }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
        if isInt, let v = Int64(text) { return .int(v) }
        guard let d = Double(text), d.isFinite else { throw fail("number out of range") }
        return .double(d)
    }

    private mutating func string() throws(Failure) -> String {
        i += 1  // the opening quote
        let start = i
        // Fast path: no escapes.
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                // The text is a Swift String, so valid UTF-8 (files are checked when read).
                let s = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
                i += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw fail("control character in a string") }
            i += 1
        }
        var out = Array(UnsafeBufferPointer(rebasing: b[start..<i]))
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; return String(decoding: out, as: UTF8.self) }
            if c < 0x20 { throw fail("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { break }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var u = try hex4()
                if u >= 0xD800 && u < 0xDC00 {
                    // A surrogate pair: the low half must follow.
                    guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else { throw fail("lone surrogate") }
                    i += 2
                    let lo = try hex4()
                    guard lo >= 0xDC00 && lo < 0xE000 else { throw fail("lone surrogate") }
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                } else if u >= 0xDC00 && u < 0xE000 { throw fail("lone surrogate") }
                guard let scalar = Unicode.Scalar(u) else { throw fail("invalid \\u escape") }
                out.append(contentsOf: Array(String(Character(scalar)).utf8))
            default: throw fail("invalid escape")
            }
        }
        throw fail("unterminated string")
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard i + 4 <= b.count else { throw fail("invalid \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("invalid \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }
}
