// Package buildinfo says which build of Sluice is running: the version
// `make build` stamps with -ldflags (else the module's own version), the
// VCS revision the Go toolchain records, and the Go version.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// version and revision are set at link time (`make build` does):
//
//	-ldflags "-X github.com/sluicehq/sluice/pkg/buildinfo.version=v1.2.3"
//
// The toolchain's own VCS stamp fills revision when they are not, but it
// stamps nothing in a workspace build.
var version, revision string

// Info describes a build.
type Info struct {
	Version  string `json:"version"`
	Revision string `json:"revision"`
	Go       string `json:"go"`
}

// Get returns the running binary's build.
var Get = sync.OnceValue(func() Info {
	info := Info{Version: version, Revision: revision, Go: runtime.Version()}
	if info.Revision == "" {
		info.Revision = "unknown"
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if info.Version == "" {
			info.Version = "unknown"
		}
		return info
	}
	if info.Version == "" {
		info.Version = bi.Main.Version // "(devel)" outside a tagged module
	}
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if revision == "" {
				info.Revision = s.Value
			}
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && revision == "" && info.Revision != "unknown" {
		info.Revision += "-dirty"
	}
	return info
})

// String is the line --version prints.
func (i Info) String() string {
	return fmt.Sprintf("%s (revision %s, %s)", i.Version, i.Revision, i.Go)
}

var registerOnce sync.Once

// Register exports sluice_build_info on the default registry.
func Register() {
	registerOnce.Do(func() {
		i := Get()
		promauto.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_build_info",
			Help: "Always 1; its labels say which build runs.",
		}, []string{"version", "revision", "go"}).WithLabelValues(i.Version, i.Revision, i.Go).Set(1)
	})
}
