/// The HTTP/2 abuse limits nghttp2 1.52 does not enforce itself (Envoy's codec limits), as a pure
/// state machine fed with the frames a connection receives and sends: no I/O, unit-tested.
///
/// - Consecutive frames with an empty payload (DATA of length 0 without END_STREAM), past
///   `maxConsecutiveEmpty` (CVE-2019-9518).
/// - PRIORITY frames, past `maxPriorityPerStream` × (1 + streams opened).
/// - WINDOW_UPDATE frames, past 5 + 2 × (streams opened + `maxWindowUpdatePerDataSent` × DATA
///   frames sent) (Envoy's formula).
/// - Premature resets (Envoy 1.27.1, CVE-2023-44487): once at least `prematureResetMinStreams`
///   streams were opened, half or more of them reset by the client before their response was
///   complete.
struct Http2FloodGuard {
    enum Verdict: Equatable { case ok, emptyFrames, priorityFrames, windowUpdateFrames, prematureResets }

    var maxConsecutiveEmpty = 1
    var maxPriorityPerStream = 100
    var maxWindowUpdatePerDataSent = 10
    var prematureResetMinStreams = 500

    private(set) var consecutiveEmpty = 0
    private(set) var priorityFrames = 0
    private(set) var windowUpdates = 0
    private(set) var streamsOpened = 0
    private(set) var dataFramesSent = 0
    private(set) var prematureResets = 0

    /// A frame arrived (`type` as on the wire; `length` its payload).
    mutating func received(type: UInt8, length: Int, endStream: Bool) -> Verdict {
        switch type {
        case 0x0:  // DATA
            if length == 0 && !endStream {
                consecutiveEmpty += 1
                if consecutiveEmpty > maxConsecutiveEmpty { return .emptyFrames }
                return .ok
            }
        case 0x1:  // HEADERS
            break
        case 0x2:  // PRIORITY
            priorityFrames += 1
            if priorityFrames > maxPriorityPerStream * (1 + streamsOpened) { return .priorityFrames }
        case 0x8:  // WINDOW_UPDATE
            windowUpdates += 1
            if windowUpdates > 5 + 2 * (streamsOpened + maxWindowUpdatePerDataSent * dataFramesSent) { return .windowUpdateFrames }
        default:
            break
        }
        consecutiveEmpty = 0
        return .ok
    }

    /// A client opened a stream.
    mutating func streamOpened() { streamsOpened += 1 }

    /// A DATA frame went out.
    mutating func dataSent() { dataFramesSent += 1 }

    /// A stream the client opened ended by its RST_STREAM before its response was complete.
    mutating func prematureReset() -> Verdict {
        prematureResets += 1
        if streamsOpened >= prematureResetMinStreams && prematureResets * 2 >= streamsOpened { return .prematureResets }
        return .ok
    }
}
