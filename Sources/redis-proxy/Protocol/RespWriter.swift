import Common

/// Appends RESP2 values to a buffer: re-encoded inline requests, the proxy's own replies
/// (PING, merged MGET/DEL results, errors). Numbers are formatted into a stack buffer, never
/// through a String.
public enum RespWriter {
    /// `*<count>\r\n`.
    public static func arrayHeader(_ count: Int, into out: Buffer) { line(UInt8(ascii: "*"), count, into: out) }

    /// `$<len>\r\n<bytes>\r\n`.
    public static func bulk(_ bytes: UnsafeRawBufferPointer, into out: Buffer) {
        line(UInt8(ascii: "$"), bytes.count, into: out)
        out.append(bytes)
        crlf(into: out)
    }

    public static func bulk(_ bytes: [UInt8], into out: Buffer) { bytes.withUnsafeBytes { bulk($0, into: out) } }

    /// `$-1\r\n`, the nil bulk (MGET's missing key).
    public static func nullBulk(into out: Buffer) { line(UInt8(ascii: "$"), -1, into: out) }

    /// `:<n>\r\n`.
    public static func integer(_ n: Int, into out: Buffer) { line(UInt8(ascii: ":"), n, into: out) }

    /// `+<text>\r\n`; `text` must hold no CR or LF.
    public static func simple(_ text: StaticString, into out: Buffer) {
        out.append([UInt8(ascii: "+")])
        out.append(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        crlf(into: out)
    }

    /// `-<text>\r\n` (text with its prefix: `ERR ...`, `NOAUTH ...`); CR and LF in it become
    /// spaces, as Redis's addReplyError does, so a quoted argument cannot break the framing.
    public static func error(_ text: [UInt8], into out: Buffer) {
        var t = text
        for i in t.indices where t[i] == 0x0D || t[i] == 0x0A { t[i] = 0x20 }
        out.append([UInt8(ascii: "-")])
        out.append(t)
        crlf(into: out)
    }

    @inline(__always) static func crlf(into out: Buffer) {
        let w = out.reserve(2)
        w[0] = 0x0D; w[1] = 0x0A
        out.commit(2)
    }

    /// `<prefix><decimal n>\r\n` in one reserve.
    static func line(_ prefix: UInt8, _ n: Int, into out: Buffer) {
        let w = out.reserve(24)
        w[0] = prefix
        var i = 1
        var v = n.magnitude
        if n < 0 { w[i] = UInt8(ascii: "-"); i += 1 }
        let digitsStart = i
        repeat {
            w[i] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10; i += 1
        } while v > 0
        var a = digitsStart, b = i - 1
        while a < b { w.swapAt(a, b); a += 1; b -= 1 }
        w[i] = 0x0D; w[i + 1] = 0x0A
        out.commit(i + 2)
    }
}
