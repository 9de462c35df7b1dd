import Common
import Glibc

// redis-proxy is not built yet: it follows tcp-proxy and the cluster subsystem in the issue order.
FileHandleOut.stderr("redis-proxy \(toolkitVersion): not implemented yet (see README.md, Status)\n")
exit(2)
