package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Missing ends a test that lacks what it needs: it fails under CI (CI set
// and not false or 0), where everything the tests need is installed, and
// is skipped elsewhere.
func Missing(t testing.TB, what string) {
	t.Helper()
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatalf("%s is needed under CI", what)
	}
	t.Skipf("%s is needed, skipped", what)
}

// Tool returns the path of the program name on PATH, or ends the test with
// Missing; hint says how to install it.
func Tool(t testing.TB, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name+" on PATH ("+hint+")")
	}
	return p
}
