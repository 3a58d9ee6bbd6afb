// berth-gitops-check judges berth's resources the way GitOps tools do, for berth's tests.
//
//	berth-gitops-check kstatus < objects.json
//	    reads a JSON array of objects and prints a JSON array of {"status", "message"},
//	    computed by kstatus (sigs.k8s.io/cli-utils status.Compute), which Flux, kpt and
//	    `kubectl wait`-style tools use.
//	berth-gitops-check health SCRIPT.lua < objects.json
//	    runs an Argo CD health script on each object as Argo CD runs argocd-cm scripts
//	    and prints a JSON array of {"status", "message"}.
//	berth-gitops-check health-tests DIR
//	    runs every DIR/<group>/<Kind>/health_test.yaml case (Argo CD's
//	    resource_customizations layout) and fails on any status or message mismatch.
//
// The Lua interpreter is gopher-lua, as in Argo CD, opened like Argo CD's util/lua
// opens it for scripts from argocd-cm (useOpenLibs false): only the package, base and
// table libraries (Argo CD adds a "safe" os library with os.time and os.date, which
// berth's scripts do not use), no string library, a one-second time limit, and the
// object as the global `obj`, decoded from JSON into Lua tables.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: berth-gitops-check kstatus | health SCRIPT | health-tests DIR")
	}
	var err error
	switch os.Args[1] {
	case "kstatus":
		err = kstatus()
	case "health":
		if len(os.Args) != 3 {
			fail("usage: berth-gitops-check health SCRIPT.lua < objects.json")
		}
		err = health(os.Args[2])
	case "health-tests":
		if len(os.Args) != 3 {
			fail("usage: berth-gitops-check health-tests DIR")
		}
		err = healthTests(os.Args[2])
	default:
		fail("unknown command " + os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "berth-gitops-check:", message)
	os.Exit(1)
}

func readObjects() ([]map[string]interface{}, error) {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		return nil, err
	}
	// Numbers as int64 where integral, as in objects read from the apiserver.
	var objects []map[string]interface{}
	if err := utiljson.Unmarshal(data, &objects); err != nil {
		return nil, fmt.Errorf("stdin is not a JSON array of objects: %w", err)
	}
	return objects, nil
}

func printJSON(v interface{}) error {
	out, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(out))
	return err
}

func kstatus() error {
	objects, err := readObjects()
	if err != nil {
		return err
	}
	results := []verdict{}
	for _, object := range objects {
		result, err := status.Compute(&unstructured.Unstructured{Object: object})
		if err != nil {
			return err
		}
		results = append(results, verdict{Status: result.Status.String(), Message: result.Message})
	}
	return printJSON(results)
}

func health(scriptPath string) error {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return err
	}
	objects, err := readObjects()
	if err != nil {
		return err
	}
	results := []verdict{}
	for _, object := range objects {
		result, err := runHealth(string(script), object)
		if err != nil {
			return err
		}
		results = append(results, result)
	}
	return printJSON(results)
}

// The health statuses Argo CD accepts from a script.
var healthStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

// runHealth runs script with obj set, as Argo CD's VM.ExecuteHealthLua does.
func runHealth(script string, object map[string]interface{}) (verdict, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return verdict{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decode(l, object))
	if err := l.DoString(script); err != nil {
		return verdict{}, fmt.Errorf("health script failed: %w", err)
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return verdict{}, fmt.Errorf("health script returned %s, not a table", l.Get(-1).Type())
	}
	result := verdict{
		Status:  lua.LVAsString(table.RawGetString("status")),
		Message: lua.LVAsString(table.RawGetString("message")),
	}
	if !healthStatuses[result.Status] {
		return verdict{}, fmt.Errorf("health script returned status %q, which Argo CD does not accept", result.Status)
	}
	return result, nil
}

// decode turns a JSON value into Lua values, as Argo CD's decodeValue does.
func decode(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(float64(v))
	case int:
		return lua.LNumber(float64(v))
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	case []interface{}:
		table := l.NewTable()
		for _, item := range v {
			table.Append(decode(l, item))
		}
		return table
	case map[string]interface{}:
		table := l.NewTable()
		for key, item := range v {
			table.RawSetString(key, decode(l, item))
		}
		return table
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

type healthTest struct {
	Tests []struct {
		HealthStatus verdict `json:"healthStatus"`
		InputPath    string  `json:"inputPath"`
	} `json:"tests"`
}

func healthTests(dir string) error {
	tests, err := filepath.Glob(filepath.Join(dir, "*", "*", "health_test.yaml"))
	if err != nil {
		return err
	}
	if len(tests) == 0 {
		return fmt.Errorf("no */*/health_test.yaml under %s", dir)
	}
	failed, cases := 0, 0
	for _, testPath := range tests {
		kindDir := filepath.Dir(testPath)
		script, err := os.ReadFile(filepath.Join(kindDir, "health.lua"))
		if err != nil {
			return err
		}
		data, err := os.ReadFile(testPath)
		if err != nil {
			return err
		}
		var suite healthTest
		if err := yaml.UnmarshalStrict(data, &suite); err != nil {
			return fmt.Errorf("%s: %w", testPath, err)
		}
		for _, tc := range suite.Tests {
			cases++
			input, err := os.ReadFile(filepath.Join(kindDir, tc.InputPath))
			if err != nil {
				return err
			}
			var object map[string]interface{}
			if err := yaml.Unmarshal(input, &object); err != nil {
				return fmt.Errorf("%s: %w", tc.InputPath, err)
			}
			got, err := runHealth(string(script), object)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", kindDir, tc.InputPath, err)
			}
			if got != tc.HealthStatus {
				failed++
				fmt.Printf("FAIL %s %s: got %+v, want %+v\n", kindDir, tc.InputPath, got, tc.HealthStatus)
			} else {
				fmt.Printf("ok   %s %s: %s\n", kindDir, tc.InputPath, got.Status)
			}
		}
	}
	fmt.Printf("%d cases, %d failed\n", cases, failed)
	if failed > 0 {
		return fmt.Errorf("%d of %d health_test.yaml cases failed", failed, cases)
	}
	return nil
}
