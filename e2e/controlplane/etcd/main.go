// Command etcd runs the upstream etcd server unchanged.
//
// go.etcd.io/etcd/server/v3 replaces its sibling modules with local paths, so
// it cannot be built with "go install module@version"; this wrapper module
// requires it at a pinned release and calls its entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
