package e2e

import "os"

func writeFile(path, doc string) error { return os.WriteFile(path, []byte(doc), 0o644) }

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
